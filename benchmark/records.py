"""The records the runner writes and every other part reads: ``result.json`` (``RunRecord``) and ``plan.json``
(``PlanRecord``), typed and versioned (ARCHITECTURE.md, "records" and "A new field in result.json").

``SCHEMA`` is the version of both files. An older file is upgraded in memory (``upgrade``), never rewritten;
keys a model does not declare are kept as extras, so every committed result loads and writes back unchanged.

Schemas:
  1  the first result.json; plan.json had no ``schema`` key (runs without ``kind`` and ``columns``).
  2  the typed records of this module. A schema-1 result.json reads as schema 2 with the values its readers
     always assumed for keys that schema 1 could lack: ``id_scheme`` 1, ``batching`` "shuffled" (results
     from before grouped batching), ``selection`` "dev" (before held-out selection), ``role`` "grid",
     ``wall_seconds`` 0; a plan.json without ``schema`` reads with ``columns`` = [its label].

Layer 0: imports only ``errors`` and ``paths``; no torch, so the reporter and ``afbench status`` load fast.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from benchmark.errors import BenchError
from benchmark.paths import read_regular, write_atomic

SCHEMA = 2
RESULT = "result.json"
PLAN = "plan.json"
MAX_RECORD_BYTES = 32 << 20  # a result.json is tens of KB, a plan.json of 10,000 runs a few MB
SPEED = "inference_speed.json"  # afbench speed's measurement of an experiment's finished runs (analysis/speed.py)
LAST_FAILURE = "last_failure.json"  # a failed rerun of a finished run, written beside the kept result
STATUSES = ("finished", "failed")


class RecordError(BenchError):
    """A result.json or plan.json that cannot be read as a record."""


class _Record(BaseModel):
    # extra="allow": keys of older or newer files (and per-recipe measurements) are kept and written back;
    # populate_by_name: ``schema_`` is filled from the file's "schema" key or by name
    model_config = ConfigDict(extra="allow", validate_assignment=True, populate_by_name=True,
                              protected_namespaces=())

    def dump(self) -> dict:
        """The JSON object to write: what was set, in declaration order, "schema" first, extras after (python
        mode, so a non-finite float stays as json writes it)."""
        out = self.model_dump(exclude_unset=True, by_alias=True)
        return {"schema": out.pop("schema"), **out} if "schema" in out else out

    def extra(self, key: str, default: Any = None) -> Any:
        """A key this model does not declare (measured by one recipe, or from another version)."""
        return (self.model_extra or {}).get(key, default)


Num = int | float  # a measured number: an int stays an int, so a record reads and writes back unchanged


class _Payload(BaseModel):
    """A nested part of a record: typed, every key optional (a record missing one still reads; readers check
    for None). Keys it does not declare (a newer writer's) are kept and written back; ``undeclared`` names
    them, and the tests fail when our own writer puts one there (a misspelt key)."""
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class ParamCounts(_Payload):
    trained: int | None = None
    total: int | None = None
    backbone: int | None = None  # the encoder's own parameters, where a recipe counted them


class Padding(_Payload):
    real_tokens: int = 0  # tokens the batches held
    computed_tokens: int = 0  # tokens the model computed (padding included)


class DataCounts(_Payload):
    train_rows: int | None = None
    train_rows_total: int | None = None
    eval_rows: int | None = None
    eval_rows_total: int | None = None
    source: str = ""
    heldout_rows: int | None = None


class Memory(_Payload):
    peak_rss_bytes: int | None = None
    rss_at_start_bytes: int | None = None
    peak_rss_method: str | None = None
    cuda_max_allocated_bytes: int | None = None


class Epoch(_Payload):
    """One entry of ``history`` (MT-A adds the per-task accuracies and its sampling temperature)."""
    epoch: int | None = None
    train_loss: Num | None = None
    dev_accuracy: Num | None = None
    dev_accuracy_per_task: dict[str, Num | None] | None = None
    alpha: Num | None = None
    heldout_accuracy: Num | None = None
    heldout_accuracy_per_task: dict[str, Num | None] | None = None
    seconds: Num | None = None


class TaskResult(_Payload):
    """One task of an MT-A run (``per_task``)."""
    best_metric: Num | None = None
    history: list[Num | None] = []  # the task's dev accuracy per epoch
    data: DataCounts | None = None


class PredictionsEntry(_Payload):
    """``predictions.parquet`` beside the result (benchmark/predictions.py)."""
    file: str | None = None
    sha256: str | None = None
    rows: int | None = None


class FusionAttention(_Payload):
    adapters: list[str] = []
    layers: list = []  # per layer, per adapter: the mean softmax weight on the dev split
    mixing: str | None = None  # "static": static mixing's weights (one softmax per layer, every token alike); else fusion's
    dev_accuracy: Num | None = None


class MergeInfo(_Payload):
    """What a weight-merge run (``fusion.mixing: merge``) merged into its one adapter."""

    how: str | None = None  # average, task_arithmetic, ties, dare, dare_ties
    density: Num | None = None  # share of each task vector kept (TIES' top-k, DARE's 1 - p); None: not applied
    weight: Num | None = None  # lambda; None: not applied (average)
    sources: list[str] = []  # the merged source adapters, in order
    source_seed: int | None = None  # the seed of the stage-1 runs, whose shared init is the task vectors' base
    base: str | None = None  # "init" (the stage-1 initialisation re-created) or "none" (average: no task vectors)
    train_adapter: bool | None = None  # the merged adapter trained with the head (else frozen)
    combination: str | None = None  # LoRA sources: PEFT's add_weighted_adapter type the merge is (ties, svd, ...)
    rank: int | None = None  # LoRA sources: the merged LoRA's rank (alpha = rank, as PEFT's)


class LoraHubInfo(_Payload):
    """What a LoraHub run (``fusion.mixing: lorahub``) found: one weight per LoRA source, on few target rows."""

    weights: dict[str, Num] = {}  # source -> its weight w_i in A = sum w_i A_i, B = sum w_i B_i
    objective: Num | None = None  # the search's objective at the weights: cross-validated few-shot CE + l1 * mean |w|
    objective_at_zero: Num | None = None  # the cross-validated few-shot CE at w = 0 (the encoder as it is)
    shots: int | None = None  # target train rows searched on
    evaluations: int | None = None  # loss evaluations the search made
    budget: int | None = None
    source_seed: int | None = None  # the seed of the stage-1 LoRA runs
    search_seconds: Num | None = None  # the search, before training (not in train_seconds)


class RunRecord(_Record):
    """One ``result.json``. Declared: what the runner, ``plan``, ``status``, Slurm, ``migrate`` and the
    reporter read."""

    schema_: int = Field(SCHEMA, alias="schema")  # the file's "schema" (``schema`` is taken on pydantic models)
    id_scheme: int = 1
    status: Literal["finished", "failed"]
    run_id: str
    experiment: str
    task: str | None = None
    tasks: list[str] = []
    method: str | None = None
    method_kind: str | None = None
    label: str
    role: Literal["grid", "stage1"] = "grid"  # stage1: only a dependency of fusion runs
    reduction_factor: int | None = None
    backbone: str
    paper_backbone: str | None = None
    seed: int
    sources: list[str] = []
    deps: list[str] = []
    config: dict = {}
    batching: str = "shuffled"
    selection: str = "dev"
    metric: str | None = None
    # measured (benchmark/training/recipe.py)
    history: list[Epoch] = []
    best_epoch: int | None = None
    best_metric: float | None = None
    selection_metric: float | None = None
    stopped_early: str | None = None  # why training stopped before its last epoch
    per_task: dict[str, TaskResult] | None = None  # MT-A
    params: ParamCounts | None = None
    padding: Padding | None = None
    data: DataCounts | None = None
    fusion_attention: FusionAttention | None = None
    merge: MergeInfo | None = None  # a weight-merge run: what was merged (fusion.mixing: merge)
    lorahub: LoraHubInfo | None = None  # a LoraHub run: the weights its search found (fusion.mixing: lorahub)
    memory: Memory | None = None
    train_seconds: float | None = None
    checkpoint_bytes: int | None = None
    diverged: bool = False
    traceback_tail: str | None = None
    weights_sha256: str | None = None
    predictions: PredictionsEntry | None = None
    # the run
    error: str | None = None
    wall_seconds: float = 0.0
    device: str | None = None
    torch_threads: int | None = None
    cpu_kernels: str | None = None
    last_layer: str | None = None
    precision: str | None = None
    compile: dict | None = None  # a compiled run (compute.compile): backend, graphs, recompiles, shapes
    slurm_job_id: str | None = None
    slurm_node: str | None = None
    cpu_model: str | None = None
    host: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    versions: dict = {}
    environment: dict | None = None
    git: dict = {}
    previous_result: dict | None = None  # a rerun of the same id: what the result it replaced said
    migrated_from: str | None = None  # afbench migrate: the id under the older scheme

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def trained_tasks(self) -> list[str]:
        """The tasks this result holds metrics for (MT-A: ``per_task``; a failed MT-A run: its ``tasks``)."""
        if self.per_task:
            return list(self.per_task)
        return [self.task] if self.task else list(self.tasks)

    @property
    def data_source(self) -> str:
        return self.data.source if self.data else ""

    @property
    def first_error_line(self) -> str:
        return (self.error or "").splitlines()[0] if self.error else ""

    @property
    def compute_config(self) -> dict:
        """The resolved ``compute`` section the run ran with; a result from before it was recorded: the kernels
        and last layer it recorded (absent there: stock kernels and the full last layer, as they then ran)."""
        return (self.config or {}).get("compute") or {"cpu_kernels": self.cpu_kernels or "stock",
                                                     "last_layer": self.last_layer or "full"}


def undeclared(model: BaseModel, where: str = "") -> list[str]:
    """The keys inside a record's nested payloads that their model does not declare, as dotted paths
    (``params.trainde``). Kept when read (a newer writer's), but our own writer must put none there."""
    out = [f"{where}{k}" for k in (model.model_extra or {})] if isinstance(model, _Payload) else []
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else [("", value)]
        for key, v in items:
            if isinstance(v, BaseModel):
                out += undeclared(v, f"{where}{name}{f'.{key}' if key != '' else ''}.")
    return out


class PlanRun(_Record):
    id: str
    task: str | None = None
    tasks: list[str] = []
    label: str
    kind: str | None = None  # the method kind (absent from plan.json written before variant columns)
    columns: list[str] = []  # the report columns it fills (upgraded: [label])
    backbone: str
    seed: int
    role: Literal["grid", "stage1"] = "grid"

    @property
    def rows(self) -> list[str]:
        return [self.task] if self.task else list(self.tasks)


class Skipped(_Record):
    what: str
    why: str


class PlanRecord(_Record):
    """``plan.json``: what the report needs of a plan (the expected cells and the tasks left out, with why),
    and the reporter's view of the current plan (``Plan.record()``)."""

    schema_: int = Field(SCHEMA, alias="schema")
    experiment: str
    description: str = ""
    runs: list[PlanRun] = []
    skipped: list[Skipped] = []
    targets: list[str] = []  # the tasks of the experiment's groups: its table rows (empty: every task)


# ------------------------------------------------------------------------------------------ reading
# key -> type name: what a readable result must have (readers index results by these)
REQUIRED = {"status": str, "run_id": str, "experiment": str, "label": str, "backbone": str, "seed": int}


def _is_accuracy(x: object) -> bool:
    """A real, finite number in 0..100, a metric every task spec can have (``metric: accuracy``, in percent): NaN
    or inf in a finished result is damage (JSON allows neither; Python writes them), and 1e308 is not a score."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and 0 <= x <= 100


def _problem(data: object, folder_name: str | None) -> tuple[str, str]:
    """(why ``data`` is not a usable result, the field), ("", "") when it is."""
    if not isinstance(data, dict):
        return f"expected a JSON object, found {type(data).__name__}", ""
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        return "missing " + ", ".join(f"'{k}'" for k in missing), missing[0]
    for k, t in REQUIRED.items():
        if not isinstance(data[k], t) or isinstance(data[k], bool):
            return f"'{k}' is {type(data[k]).__name__}, expected {t.__name__}", k
    schema = data.get("schema", 1)
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        return f"'schema' is {schema!r}, expected a positive integer (the record version)", "schema"
    if data["status"] not in STATUSES:
        return f"'status' is {data['status']!r}, expected one of {', '.join(STATUSES)}", "status"
    if folder_name is not None and data["run_id"] != folder_name:
        return f"'run_id' {data['run_id']!r} does not match its folder {folder_name!r}", "run_id"
    if not data.get("task") and not data.get("tasks"):
        return "neither 'task' nor 'tasks' is set", "task"
    if data["status"] == "finished":
        per_task = data.get("per_task")
        if per_task is not None:
            bad = [t for t, v in per_task.items() if not _is_accuracy((v or {}).get("best_metric"))] \
                if isinstance(per_task, dict) else ["(not an object)"]
            if bad:
                return f"'per_task' has no numeric best_metric for {', '.join(bad)} (an accuracy in percent, " \
                       "0..100)", "per_task"
        elif not _is_accuracy(best := data.get("best_metric")):
            what = "missing" if best is None else repr(best) if isinstance(best, float) else type(best).__name__
            return f"finished but 'best_metric' is {what}, not a finite accuracy in 0..100 (percent)", "best_metric"
    return "", ""


def _validation_reason(e: ValidationError) -> tuple[str, str]:
    """(why, the field) of pydantic's first error."""
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"'{where or '(top level)'}': {err['msg']}" + (f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1
                                                           else ""), where


def upgrade(data: dict) -> dict:
    """A result.json object of any schema as schema ``SCHEMA`` (a copy; the file is not touched). A newer
    schema is read as it is (``read_result_file`` never gets that far: it calls it *newer*): the keys this version
    declares are checked, the others kept."""
    if data.get("schema", 1) < 2:  # 1 -> 2: the values readers assumed for keys that schema 1 could lack
        return {"id_scheme": 1, "batching": "shuffled", "selection": "dev", "role": "grid", "wall_seconds": 0.0,
                **data, "schema": 2}
    return dict(data)


def parse_run(data: object, *, file: str | Path | None = None, folder_name: str | None = None) -> RunRecord:
    """``data`` (a parsed result.json of any schema) as a RunRecord, or one RecordError paragraph."""
    why, key = _problem(data, folder_name)
    if not why:
        try:
            return RunRecord.model_validate(upgrade(data))
        except ValidationError as e:
            why, key = _validation_reason(e)
    raise RecordError(f"this is not a run result: {why}", file=str(file) if file else None, field=key or None,
                      fix="restore the file from git (git checkout -- <file>), or remove its run folder so "
                          "`afbench run` trains the run again")


def _read_json(path: Path, fix: str, lead: str = "") -> object:
    """The parsed file, or one RecordError "<lead>not readable JSON (why)" (OSError: it could not be read, or
    is not a regular file of at most ``MAX_RECORD_BYTES``, ``paths.read_regular``; ``lead``: "is " where the
    message follows the file's name, as plan.json's do)."""
    try:
        return json.loads(read_regular(path, MAX_RECORD_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else "nested too deeply" \
            if isinstance(e, RecursionError) else e
        raise RecordError(f"{lead}not readable JSON ({why})", file=str(path), fix=fix) from None


RUN_FIX = "restore the file from git, or remove its run folder so the run is trained again"
PLAN_FIX = "rerun `afbench run` (it writes plan.json), or remove the file"


def load_run(path: Path) -> RunRecord:
    """Read one result.json (any schema) or raise RecordError."""
    data = _read_json(path, RUN_FIX)
    return parse_run(data, file=path, folder_name=path.parent.name)


def write_run(path: Path, record: RunRecord | dict, *, root: Path | None = None) -> None:
    """Validate and write a result.json atomically (``paths.write_atomic``)."""
    rec = record if isinstance(record, RunRecord) else RunRecord.model_validate(record)
    write_atomic(path, json.dumps(rec.dump(), indent=2) + "\n", root=root)


def add_to_run(path: Path, fields: dict, *, root: Path | None = None) -> None:
    """Add (or replace) top-level keys of a finished run's result.json, the rest as it was, byte for byte (key
    order, schema, values): ``afbench predict`` records predictions without rewriting the run. The file and
    the result are both checked as records before the atomic write."""
    data = _read_json(path, RUN_FIX)
    parse_run(data, file=path, folder_name=path.parent.name)
    out = {**data, **fields}
    parse_run(out, file=path, folder_name=path.parent.name)
    write_atomic(path, json.dumps(out, indent=2) + "\n", root=root)


def load_plan(path: Path) -> PlanRecord:
    """A plan.json of any schema as a PlanRecord, or one RecordError paragraph."""
    data = _read_json(path, PLAN_FIX, "is ")
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise RecordError("has no 'runs' list", file=str(path), field="runs", fix=PLAN_FIX)
    out = dict(data)
    if out.get("schema", 1) < 2:  # 1 -> 2: a run without report columns fills its label's
        out["schema"] = 2
        out["runs"] = [{**r, "columns": r.get("columns") or [r.get("label")]} if isinstance(r, dict) else r
                       for r in out["runs"]]
    try:
        return PlanRecord.model_validate(out)
    except ValidationError as e:
        why, key = _validation_reason(e)
        raise RecordError(f"is not a plan record: {why}", file=str(path), field=key, fix=PLAN_FIX) from None


def write_plan(path: Path, record: PlanRecord, *, root: Path | None = None) -> bool:
    """Write plan.json, unless the file there already records this plan (read as ``SCHEMA`` in memory, a run's
    ``kind``, which older files lack, taken from ``record``): a run that trains nothing leaves a committed
    plan.json as it is. Returns whether it wrote."""
    with contextlib.suppress(RecordError):  # missing, unreadable or not a plan: written anew
        old = load_plan(path).model_dump(by_alias=True)
        kinds = {r.id: r.kind for r in record.runs}
        for r in old["runs"]:
            r["kind"] = r["kind"] or kinds.get(r["id"])
        if old == record.model_dump(by_alias=True):
            return False
    write_atomic(path, json.dumps(record.dump(), indent=2) + "\n", root=root)
    return True


@dataclass(frozen=True)
class ResultFile:
    """One ``result.json`` as read from disk: ``state`` is "ok", "missing", "corrupt" (never a finished run: the
    runner retrains it, ``plan`` / ``report`` name it) or "newer" (with why)."""

    path: Path
    state: str
    record: RunRecord | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    @property
    def finished(self) -> bool:
        return self.ok and self.record.finished

    def where(self, root: Path) -> str:
        """The file relative to the results root (reports hold no machine paths)."""
        return str(self.path.relative_to(root)) if self.path.is_relative_to(root) \
            else f"{self.path.parent.name}/{self.path.name}"


def read_result_file(run_dir: Path) -> ResultFile:
    """Read and check ``run_dir/result.json``; never raises for a damaged file."""
    f = run_dir / RESULT
    if not f.exists():
        return ResultFile(f, "missing")
    try:
        data = _read_json(f, "")
        schema = data.get("schema") if isinstance(data, dict) else None
        if isinstance(schema, int) and not isinstance(schema, bool) and schema > SCHEMA:
            return ResultFile(f, "newer", reason=f"newer schema: upgrade afbench (the record is schema {schema}, "
                                                 f"this afbench reads up to {SCHEMA})")
        return ResultFile(f, "ok", parse_run(data, file=f, folder_name=run_dir.name))
    except RecordError as e:
        return ResultFile(f, "corrupt", reason=e.message.removeprefix("this is not a run result: "))


def read_result(run_dir: Path) -> RunRecord | None:
    """The result of a run folder if it is there and well-formed, else None."""
    return read_result_file(run_dir).record


class SpeedRun(_Payload):
    """One run as ``afbench speed`` timed it (``analysis/speed.py``)."""
    task: str
    seed: int
    examples_per_second: float = Field(gt=0)
    latency_ms_batch1: float | None = None


class Speed(_Payload):
    """``afbench speed``'s measurement of an experiment's finished runs (``SPEED`` in its folder)."""
    runs: dict[str, SpeedRun]
    rounds: int | None = None
    weights: str | None = None  # "frozen" (cpu_kernels.serving) since 2026-12-07; None: as loaded (F.linear)
    static_mixing: str | None = None  # "stacked" (served as fusion's fast path) since 2026-12-07; None: one by one
    provenance: dict[str, Any] = Field(default_factory=dict)
    drift_guard: dict[str, Any] = Field(default_factory=dict)


def read_speed(exp_dir: Path) -> Speed | None:
    """``afbench speed``'s measurement in an experiment folder; None where there is none; a RecordError naming
    the file and the field where it is there but not one (not JSON, a run without its examples/s ...)."""
    if not (exp_dir / SPEED).exists():
        return None
    fix = "measure again (afbench speed EXPERIMENT --only GLOB), or remove the file"
    data = _read_json(exp_dir / SPEED, fix)
    try:
        return Speed.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise RecordError(f"not afbench speed's measurement ({err['msg']})", file=str(exp_dir / SPEED),
                          field=".".join(map(str, err["loc"])) or None, fix=fix) from None


def read_last_failure(run_dir: Path) -> RunRecord | None:
    """The failed rerun recorded beside a finished result (``LAST_FAILURE``), if there and well-formed."""
    try:
        return parse_run(_read_json(run_dir / LAST_FAILURE, ""), folder_name=run_dir.name)
    except RecordError:
        return None


def is_finished(run_dir: Path) -> bool:
    """Well-formed and finished: a corrupt or failed result is retrained by the runner."""
    return read_result_file(run_dir).finished


@dataclass
class ExperimentScan:
    """Everything under ``results/<experiment>/``, sorted into what a reader can use and what not (``plan``,
    ``report`` and ``status`` all scan, so they name the same damaged files)."""

    root: Path
    experiment: str
    results: list[RunRecord] = field(default_factory=list)  # well-formed results of this experiment
    corrupt: list[ResultFile] = field(default_factory=list)
    newer: list[ResultFile] = field(default_factory=list)  # of a newer schema: left alone
    foreign: list[ResultFile] = field(default_factory=list)  # well-formed, but another experiment's

    def problems(self) -> list[str]:
        """One line per file a reader should know about, paths relative to the results root."""
        out = [f"corrupt result {r.where(self.root)}: {r.reason}; treated as not finished" for r in self.corrupt]
        out += [f"result {r.where(self.root)}: {r.reason}; left out, never retrained over" for r in self.newer]
        out += [f"result {r.where(self.root)} belongs to experiment '{r.record.experiment}', not "
                f"'{self.experiment}'; left out" for r in self.foreign]
        return out


def scan_experiment(root: Path, experiment: str) -> ExperimentScan:
    scan = ExperimentScan(root, experiment)
    folder = root / experiment
    if not folder.exists():
        return scan
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        r = read_result_file(d)
        if r.state == "corrupt":
            scan.corrupt.append(r)
        elif r.state == "newer":
            scan.newer.append(r)
        elif r.ok and r.record.experiment != experiment:
            scan.foreign.append(r)
        elif r.ok:
            scan.results.append(r.record)
    return scan

