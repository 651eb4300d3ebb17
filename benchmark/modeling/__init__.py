"""Adapters, AdapterFusion and heads on stock transformers encoders."""

from benchmark.modeling.model import AdapterModel, Fuse

__all__ = ["AdapterModel", "Fuse"]
