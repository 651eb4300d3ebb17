"""The base of every spec model and of every method's parameter model (the method YAML's section, e.g.
``lora:``), here so that a method package's ``config.py`` stays in layer 0 (no torch, nothing above it).

``Strict`` forbids unknown keys (a typo is an error) and leaves out of a dump the fields added after the
first results while they hold the value they had before (``LATE_FIELDS``), so the run ids of specs that do
not set them never move. ``spec/schema.py`` re-exports both; a method package's section is late by itself
(``registry.section``), so a new method needs no line here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

# Spec fields added after the first results, with the value at which a dump leaves them out (their default), so
# the configs, and so the run ids, of specs that do not set them stay as they were: a new late field is one line.
# The sections of method packages are added to "MethodSpec" when the schema is built (spec/schema.py).
LATE_FIELDS: dict[str, dict[str, object]] = {
    "LabelSpec": {"allow_merge": False},  # it never changes what is trained, only whether the spec is accepted
    "BackboneSpec": {"path": None, "aliases": []},
    "FusionParams": {"prune": None, "mixing": "attention", "merge": None, "source_method": None, "lorahub": None},
    "MethodSpec": {"precision": None},
    "FusionSources": {"adapterhub": {}, "adapterhub_allow_other_base": []},
    "ComputeSpec": {"compile": False},  # eager, as every committed run trained: its configs read as before
}

# part of run labels and so of folder names (``st_a_rf16``); at most the width of any encoder
ReductionFactor = Annotated[int, Field(ge=1, le=100_000)]

# The linear layers of an encoder layer a tuner can target, by the layout's neutral names (layout.linear_targets).
LinearTarget = Literal["query", "key", "value", "attention_output", "intermediate", "output"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)  # .inf / .nan: a typo or an attack

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        out = handler(self)
        late = next((LATE_FIELDS[c.__name__] for c in type(self).__mro__ if c.__name__ in LATE_FIELDS), {})
        for key, unset in late.items():
            if isinstance(out, dict) and getattr(self, key) == unset:
                out.pop(key, None)
        return out
