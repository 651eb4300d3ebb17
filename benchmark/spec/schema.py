"""Pydantic models for the four kinds of spec file: task, method, backbone, experiment.

Every model forbids unknown keys, so a typo is an error, not a silently ignored setting.
Cross-references (an experiment naming a task) are checked by the registry, not here.
"""

from __future__ import annotations

import sys
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from benchmark import methods
from benchmark.methods import registry
from benchmark.methods.params import LATE_FIELDS, ReductionFactor, Strict

Batching = Literal["grouped", "shuffled"]
PRECISIONS = ("auto", "fp32", "bf16")
Precision = Literal[PRECISIONS]  # benchmark/modeling/compute.py: auto = bf16 autocast on CUDA, fp32 on CPU
# a seed every random generator takes (numpy's bound; torch's is 2**64); a list of seeds is a few runs per cell
Seed = Annotated[int, Field(ge=0, lt=2**32, description="a seed, 0 <= seed < 2**32")]
MAX_SEEDS = 100
SplitName = Annotated[str, Field(min_length=1, max_length=64)]  # part of the tokenized cache's file names


# --------------------------------------------------------------------------------------------- task
class HubDataset(Strict):
    path: str = Field(description="Hugging Face Hub dataset id, e.g. nyu-mll/glue")
    name: str | None = Field(None, description="Hub config name, e.g. rte; None for the default config")


class TaskInput(Strict):
    """Jinja2 templates over a row's columns (rendered in a sandbox)."""

    text: str | None = None
    text_pair: str | None = None
    choices: list[str] | None = Field(None, description="multiple_choice: one template per choice")


class LabelSpec(Strict):
    column: str
    names: list[str] | None = Field(None, description="class names (classification); index = class id")
    map: dict[str | int, int] | None = Field(
        None, description="raw label value -> class/choice id; default: identity over 0..K-1"
    )
    allow_merge: bool = Field(False, description="allow label.map to send several raw values to one id")

    @model_validator(mode="after")
    def _check_mapping(self) -> LabelSpec:
        """Two classes with one name, or two raw values silently merged into one class, are spec mistakes."""
        names = self.names or []
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"label.names lists {dup} more than once; each class needs its own name")
        if self.map and not self.allow_merge:
            by_id: dict[int, list] = {}
            for raw, i in self.map.items():
                by_id.setdefault(i, []).append(raw)
            merged = {i: raws for i, raws in by_id.items() if len(raws) > 1}
            if merged:
                shown = "; ".join(f"{raws} -> {i}" for i, raws in sorted(merged.items()))
                raise ValueError(f"label.map sends several raw values to one id ({shown}); if that is "
                                 "intended, add 'allow_merge: true' under label")
        return self


class Splits(Strict):
    train: SplitName = "train"
    eval: SplitName = "validation"


class PaperInfo(Strict):
    order: int | None = Field(None, description="row position in the paper's Table 1 (sorted by size)")
    train_size: int | None = Field(None, description="official training-set size")
    dev_size: int | None = Field(None, description="official size of the split we evaluate on (the cost model's "
                                                   "fallback when the data is not available)")
    group: Literal["high", "medium", "low"] | None = Field(None, description="size group of Table 1")


class TaskSpec(Strict):
    kind: Literal["task"] = "task"
    name: str
    description: str = ""
    dataset: HubDataset | None = None
    data_files: dict[str, str] | None = Field(
        None, description="split -> local CSV/JSONL/Parquet file (relative to the spec file)"
    )
    splits: Splits = Splits()
    type: Literal["classification", "multiple_choice"]
    input: TaskInput
    label: LabelSpec
    max_length: int = Field(128, gt=8, le=4096)
    metric: Literal["accuracy"] = "accuracy"
    paper: PaperInfo = PaperInfo()
    notes: str = ""

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        if (self.dataset is None) == (self.data_files is None):
            raise ValueError("give exactly one of 'dataset' (Hub id) or 'data_files' (local files)")
        if self.type == "classification":
            if not self.input.text:
                raise ValueError("a classification task needs 'input.text'")
            if self.input.choices:
                raise ValueError("'input.choices' is only for type: multiple_choice")
            if not self.label.names or len(self.label.names) < 2:
                raise ValueError("a classification task needs 'label.names' with at least two classes")
        else:
            if not self.input.choices or len(self.input.choices) < 2:
                raise ValueError("a multiple_choice task needs 'input.choices' with at least two templates")
            if self.input.text_pair:
                raise ValueError("'input.text_pair' is not used by multiple_choice (the choice is the pair)")
        k = self.num_labels
        if self.label.map is not None:
            bad = sorted({v for v in self.label.map.values() if not 0 <= v < k})
            if bad:
                raise ValueError(f"label.map sends values to ids {bad}, outside 0..{k - 1}")
        return self

    @property
    def num_labels(self) -> int:
        if self.type == "multiple_choice":
            return len(self.input.choices or [])
        return len(self.label.names or [])

    @property
    def templates(self) -> dict[str, str]:
        given = {"input.text": self.input.text, "input.text_pair": self.input.text_pair}
        choices = {f"input.choices[{i}]": c for i, c in enumerate(self.input.choices or [])}
        return {k: v for k, v in given.items() if v} | choices


# ------------------------------------------------------------------------------------------ backbone
class TokenizerSpec(Strict):
    kind: Literal["wordpiece", "bytelevel_bpe"]
    vocab_size: int = Field(2000, ge=300, le=50000)
    lowercase: bool = True


class BackboneSpec(Strict):
    kind: Literal["backbone"] = "backbone"
    name: str
    description: str = ""
    source: Literal["hub", "python_package", "random_init", "local"]
    model_id: str | None = Field(None, description="hub: the model id")
    package: str | None = Field(None, description="python_package: module with get_model_path()")
    aliases: list[str] = Field(default_factory=list, description="other names of this checkpoint that an adapter's "
                               "adapter_config.json may give as model_name (e.g. the Hub id of a python_package "
                               "source's model); checked by fusion.adapterhub, not part of the run id")
    path: str | None = Field(None, description="local: a folder with a transformers checkpoint (config.json, "
                                                "weights, tokenizer), relative to the spec file; the run id "
                                                "holds its content hash, never the path")
    model_type: str | None = Field(None, description="random_init: architecture, a transformers model_type with a "
                                   "layout in benchmark/modeling/layout.py (afbench validate checks it)")
    config: dict[str, bool | int | float | str | list[str]] = Field(default_factory=dict, description="random_init: config")
    tokenizer: TokenizerSpec | None = Field(None, description="random_init: offline tokenizer to build")
    paper_backbone: str | None = Field(None, description="the paper backbone this stands in for")
    pooling: Literal["cls", "mean"] = Field(
        "cls", description="sentence vector the heads read: first token (paper) or masked mean of the tokens")

    @model_validator(mode="after")
    def _check(self) -> BackboneSpec:
        need = {"hub": ["model_id"], "python_package": ["package"], "random_init": ["model_type", "tokenizer"],
                "local": ["path"]}
        for f in need[self.source]:
            if getattr(self, f) in (None, ""):
                raise ValueError(f"source '{self.source}' needs '{f}'")
        return self


# -------------------------------------------------------------------------------------------- method
class TrainParams(Strict):
    lr: float = Field(1e-4, gt=0)
    epochs: int = Field(30, ge=1)
    patience: int | None = Field(3, ge=1, description="early stopping patience in epochs; null = off")
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    batching: Batching | None = Field(
        None, description="training batches: grouped by length (default) or shuffled; None = the experiment's")


class _MethodSpec(Strict):
    """The method YAML's fields up to the sections of method packages (``MethodSpec`` adds those, then ``train``,
    ``precision`` and ``notes``: the order every dump had before the packages)."""

    kind: Literal["method"] = "method"
    name: str
    description: str = ""
    method: str = Field(description="a method kind registered in benchmark/methods (head, st_a, fusion_st_a, ...)")

    @field_validator("method")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in methods.KINDS:
            raise ValueError(f"unknown method kind '{v}'; known: {', '.join(methods.KINDS)}")
        return v

    @model_validator(mode="after")
    def _check(self) -> _MethodSpec:
        kind = methods.KINDS[self.method]
        for section in kind.needs:
            if getattr(self, section, None) is None:
                article = "an" if section[0] in "aeiou" else "a"
                raise ValueError(f"method '{self.method}' needs {article} '{section}' section")
        section = getattr(self, kind.needs[0], None) if kind.needs else None
        if kind.adapter_type and section is not None and section.type != kind.adapter_type:
            raise ValueError(f"{self.method} needs {kind.needs[0]}.type: {kind.adapter_type}")
        return self

    @property
    def method_kind(self) -> methods.MethodKind:
        return methods.KINDS[self.method]


def _method_spec() -> type[_MethodSpec]:
    """``MethodSpec``: one optional field per section a method package declares (``registry.section``): the paper's
    (``adapter``, ``fusion``, ``mt_a``) dump as null while unset, as they always did; every later one is a late field
    (left out of a dump while unset, so no run id of a spec without it moves)."""
    LATE_FIELDS["MethodSpec"].update({s.name: None for s in registry.sections() if s.late})
    return create_model(
        "MethodSpec", __base__=_MethodSpec, __module__=__name__,
        **{s.name: (s.params | None, None) for s in registry.sections()},
        train=(TrainParams, TrainParams()),
        precision=(Precision | None, Field(None, description="auto | fp32 | bf16 for this method's runs (default: "
                                                             "the experiment's compute.precision)")),
        notes=(str, ""))


MethodSpec = _method_spec()


def __getattr__(name: str):
    """A method package's params class by its name (``from benchmark.spec.schema import LoRAParams``), where it
    was declared before the packages, and the classes its module declares beside it (``MergeParams``)."""
    for s in registry.SECTIONS.values():
        if s.params.__name__ == name:
            return s.params
        found = getattr(sys.modules[s.params.__module__], name, None)
        if isinstance(found, type) and issubclass(found, Strict):
            return found
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------- experiment
class MethodRef(Strict):
    method: str
    reduction_factor: list[ReductionFactor] | None = Field(None, description="sweep of adapter reduction factors")
    adapter_seed: Seed | Literal["matched"] | None = Field(
        None, description="fusion kinds: whose adapters (stage-1 runs or MT-A run) a fusion seed reads, for this "
                          "entry only; its runs form their own report column. None = the experiment's "
                          "fusion.adapter_seed")


class RunGroup(Strict):
    tasks: list[str] = Field(min_length=1)
    methods: list[Annotated[str, Field(min_length=1)] | MethodRef] = Field(min_length=1)
    seeds: list[Seed] | None = Field(None, max_length=MAX_SEEDS)
    backbones: list[str] | None = None


class Caps(Strict):
    max_train_rows: int | None = Field(None, ge=1)
    max_eval_rows: int | None = Field(None, ge=1)
    max_epochs: int | None = Field(None, ge=1)
    max_length: int | None = Field(None, gt=8)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    data_seed: Seed = Field(0, description="seed of the row subsample (the same for every run seed)")


class FusionSources(Strict):
    sources: list[str] | Literal["all"] = "all"
    adapter_seed: Seed | Literal["matched"] = "matched"
    caps: Caps | None = Field(None, description="caps of the stage-1 source adapters (default: the experiment's)")
    adapterhub: dict[str, str] = Field(
        default_factory=dict, description="source task -> a published AdapterHub adapter (its folder, relative to "
                                          "this spec, or a Hub id[@revision]) used instead of a stage-1 run")
    adapterhub_allow_other_base: list[str] = Field(
        default_factory=list, description="source tasks of fusion.adapterhub whose adapter may name another base "
                                          "model than the backbone (same family and shape); the plan and the "
                                          "report state it. Not part of any run id")


class MtaSetup(Strict):
    tasks: list[str] | None = Field(None, description="tasks trained jointly; default: fusion sources")
    caps: Caps | None = Field(None, description="caps of every task's data in the joint run (default: the "
                                                "experiment's caps and task_caps)")


class Selection(Strict):
    """How the kept epoch is chosen (issue: model selection without peeking at dev)."""

    protocol: Literal["dev", "heldout"] = Field(
        "dev", description="dev: best epoch on dev, dev reported (the paper's); heldout: best epoch on a held-out "
                           "slice of train, dev of that epoch reported")
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="share of the train split held out")
    heldout_max_rows: int = Field(1000, ge=2, description="at most this many held-out rows")


class ComputeSpec(Strict):
    """How-not-what switches (benchmark/modeling/compute.py); None = the default (or the CLI flag)."""

    cpu_kernels: Literal["fast", "stock"] | None = None
    last_layer: Literal["first_token", "full"] | None = None
    precision: Precision | None = Field(
        None, description="auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 (autocast on CPU and CUDA); "
                          "part of the run id when not auto")
    compile: bool = Field(
        False, description="run the training step and evaluation through torch.compile (inductor), batches padded "
                           "to power-of-two lengths (benchmark/modeling/compiled.py); part of the run id when true")


DEFAULT_COMPUTE = ComputeSpec(cpu_kernels="fast", last_layer="first_token", precision="auto")  # what `afbench run` uses unless told


TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio")


class Tracking(Strict):
    """Experiment tracking (``afbench run --track``): never part of a run id, never a reason for a run to fail."""

    backends: list[Literal[TRACKERS]] = Field(default_factory=list, description="where each run is logged: "
                                              "tensorboard, mlflow, wandb, trackio (each its own extra, track-NAME)")
    dir: str | None = Field(None, description="local store (relative to the working directory); default: "
                                              "<results>/<experiment>/.tracking")
    mlflow_uri: str | None = Field(None, description="an MLflow tracking server; default: sqlite in dir")


class SearchRange(Strict):
    """One searched range of ``afbench sweep``: ``{low, high, log}`` or the shorthand ``"LOW:HIGH[:log]"``."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v):
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
                raise ValueError(f"'{v}' is not LOW:HIGH or LOW:HIGH:log (e.g. 1e-5:1e-3:log)")
            return {"low": parts[0], "high": parts[1], "log": len(parts) == 3}
        return v

    @model_validator(mode="after")
    def _bounds(self):
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"the range needs low < high{' and low > 0 (log)' if self.log else ''}, got "
                             f"{self.low:g}:{self.high:g}")
        return self


class SweepSpec(Strict):
    """What ``afbench sweep EXPERIMENT`` searches when no --method/--space is given (runner/sweep.py); never part
    of a run id (each trial's runs are planned with the trial's values as overrides)."""

    method: str = Field(description="the method to tune (one the experiment's groups list)")
    space: dict[str, SearchRange] = Field(min_length=1, description="train hyper-parameter -> its range, e.g. "
                                                                    "lr: 1e-5:1e-3:log")
    trials: int = Field(10, ge=1, le=10_000, description="trials the study should hold (a rerun continues it)")
    seed: Seed = Field(0, description="the TPE sampler's seed")


def searchable(train: type[BaseModel]) -> dict[str, bool]:
    """The numeric fields of a method's ``train:`` model that a sweep may search -> whether they are integers."""
    kinds = {key: set(get_args(f.annotation)) or {f.annotation} for key, f in train.model_fields.items()}
    return {key: float not in k for key, k in kinds.items() if k & {int, float}}


class ExperimentSpec(Strict):
    kind: Literal["experiment"] = "experiment"
    name: str
    description: str = ""
    backbones: list[str] = Field(min_length=1)
    seeds: list[Seed] = Field(min_length=1, max_length=MAX_SEEDS)
    groups: list[RunGroup] = Field(min_length=1)
    caps: Caps = Caps()
    task_caps: dict[str, Caps] = Field(
        default_factory=dict, description="task -> caps for every run on that task (stage-1, grid and MT-A data)")
    overrides: dict[str, dict[str, Annotated[float, Field(allow_inf_nan=True)] | int | str | None]] = Field(
        default_factory=dict, description="method name -> train hyper-parameters to override (their values are "
                                          "checked by the method's train model, registry.check_references)"
    )
    fusion: FusionSources = FusionSources()
    mt_a: MtaSetup = MtaSetup()
    batching: Batching = Field("grouped", description="training batches, unless a method spec says otherwise")
    selection: Selection = Selection()
    compute: ComputeSpec = ComputeSpec()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tracking: Tracking = Tracking()
    sweep: SweepSpec | None = Field(None, description="afbench sweep's method, space and trials; not an id field")
    dependencies_from: list[str] = Field(
        default_factory=list, description="other experiments whose finished stage-1 / MT-A runs this one reads in "
                                          "place where the run id is the same (runner/borrowed.py); not an id field")
    notes: str = ""
    report_seeds: list[int] | None = Field(
        None, description="the seeds the report's tables and tests use (default: every seed with a result): a grid "
                          "growing seed by seed keeps its tables on complete seeds while the new ones train; the "
                          "other seeds' results are kept and counted in the report's header; not an id field")
    table_notes: dict[Literal["table1", "table2", "table3", "composition"], str] = Field(
        default_factory=dict, description="a note printed under that table of the report, after its own notes: the "
                                          "deviations that change how it reads; prose, not an id field")

    @field_validator("selection", mode="before")
    @classmethod
    def _selection_shorthand(cls, v):
        return {"protocol": v} if isinstance(v, str) else v


SPEC_MODELS: dict[str, type[Strict]] = {
    "task": TaskSpec,
    "backbone": BackboneSpec,
    "method": MethodSpec,
    "experiment": ExperimentSpec,
}
