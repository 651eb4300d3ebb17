"""Declarative specs: YAML files validated by pydantic models before anything runs."""

from benchmark.spec.registry import load_registry

__all__ = ["load_registry"]
