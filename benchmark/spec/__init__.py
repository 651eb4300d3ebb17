"""Declarative specs: YAML files validated by pydantic models before anything runs."""

from benchmark.spec.registry import Registry, load_registry
from benchmark.spec.schema import BackboneSpec, ExperimentSpec, MethodSpec, TaskSpec

__all__ = ["Registry", "load_registry", "TaskSpec", "MethodSpec", "BackboneSpec", "ExperimentSpec"]
