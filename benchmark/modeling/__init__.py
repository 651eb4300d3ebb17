"""Adapters, AdapterFusion and heads on stock transformers encoders (``model.AdapterModel``). Importing
the package loads no torch, so the cost model reads backbones (``backbone.READER``) without it."""
