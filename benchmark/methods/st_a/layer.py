"""The bottleneck adapter types' side of the model API (``pfeiffer``, ``houlsby``): ``modeling/adapters.py``,
which holds the module itself, because fusion and MT-A are built of the same adapters."""

from __future__ import annotations

from benchmark.modeling.adapters import activate, attach, describe, expected_shapes, modules_of, params_from  # noqa: F401
