"""Serving a finished run (issue 40): ``load(run_folder)`` returns a ``Predictor`` that labels new rows.

    from benchmark.runner.serve import load
    model = load("results/minilm_table1/rte__fusion_st_a_rf16__minilm-l6__s42__7a6b8c2e")
    model.predict([{"sentence1": "A man plays a guitar.", "sentence2": "Nobody plays."}])  # ['not_entailment']

It reads only the run's folder (ARCHITECTURE.md, "records"; for Fusion w/ MT-A also its MT-A run's): no specs,
plan or data mirror. One difference from the run's own evaluation: every weight is frozen
(``cpu_kernels.serving``), so with the fast CPU kernels every ``nn.Linear`` runs oneDNN on a prepacked weight
where the run's evaluation ran the modules it was training through ``F.linear``; the logits agree to float
rounding, and it labels right exactly the dev rows the run's ``predictions.parquet`` marks ``correct`` (tested
on a committed MiniLM run).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmark.data.encode import EncodedSplit, capped_length, render_row, tokenize_row
from benchmark.errors import BenchError, CheckpointError
from benchmark.methods import kinds, registry
from benchmark.modeling.compute import Compute
from benchmark.modeling.cpu_kernels import serving
from benchmark.records import read_result_file
from benchmark.runner.execute import weights_problem
from benchmark.runner.export import activate, ready
from benchmark.spec.schema import BackboneSpec, Caps, ComputeSpec, MethodSpec, TaskSpec
from benchmark.training.loop import scored_batches


@dataclass
class Predictor:
    """A finished run's model for one task, ready to label rows of that task's columns."""

    run_id: str
    task: TaskSpec
    model: object  # AdapterModel, eval mode, on ``device``
    tokenizer: object
    compute: Compute
    device: torch.device
    batch_size: int  # the run's eval batch size
    max_length: int  # tokens per sequence, as the run's caps cut its rows (encode.encode_split)

    def logits(self, rows: list[dict]) -> torch.Tensor:
        """[n, C] (classification) or [n, K] (multiple choice) float32 logits, in the order of ``rows``."""
        if not rows:
            raise BenchError("no rows to predict", field="rows", fix="pass a list of dicts with the task's columns")
        examples = [{**tokenize_row(self.tokenizer, render_row(self.task, row), self.task, self.max_length),
                     "label": 0} for row in rows]
        split = EncodedSplit(self.task.name, "served", self.task.type, examples, "rows", len(examples))
        out: list[torch.Tensor | None] = [None] * len(rows)
        for idx, got, _ in scored_batches(self.model, split, self.task.name, self.tokenizer.pad_token_id,
                                          self.batch_size, self.device, self.compute):  # as the run evaluated
            for i, row_logits in zip(idx, got, strict=True):
                out[i] = row_logits.cpu()
        return torch.stack(out)

    def predict(self, rows: list[dict]) -> list:
        """Each row's label: its name where the task names its labels (``label.names``), else the class id
        (multiple choice: the chosen option's index)."""
        ids = self.logits(rows).argmax(-1).tolist()
        names = self.task.label.names if self.task.type == "classification" else None
        return [names[i] for i in ids] if names else ids


def load(folder, *, task: str | None = None, device: str = "cpu", mt_a_folder=None,
         precision: str | None = None) -> Predictor:
    """The ``Predictor`` of a finished run's folder (``task``: which of a multi-task run's tasks; ``mt_a_folder``:
    where the MT-A run a Fusion w/ MT-A run fused on lies, when not beside it; ``precision``: ``fp32`` or ``bf16``
    in place of the run's own, e.g. bf16 autocast for a run trained in float32, refused on a device without native
    bf16). Its weights (and the MT-A run's) are checked against their records first, as ``afbench predict``
    checks them."""
    folder = Path(folder)
    res = read_result_file(folder)
    if not res.finished:
        raise BenchError(f"this run is not finished ({res.state})", file=str(folder / "result.json"),
                         fix="serve a finished run (afbench status EXPERIMENT lists them)")
    rec = res.record
    cfg = rec.config
    name = task or rec.task
    if name is None or name not in cfg.get("tasks", {}):
        raise BenchError(f"say which task to serve: this run trained {sorted(cfg.get('tasks', {}))}", field="task",
                         file=str(folder / "result.json"), fix="load(folder, task=<one of them>)")
    registry.discover()  # the method kinds, to know whether the run fused on an MT-A run's tuned encoder
    encoder_from = None
    if rec.method_kind in kinds.KINDS and kinds.KINDS[rec.method_kind].depends_on == "mt_a":
        encoder_from = Path(mt_a_folder) if mt_a_folder else folder.parent / rec.deps[0]
    for f, want in ((folder, rec.run_id), (encoder_from, rec.deps[0] if rec.deps else None)):
        if f is None:
            continue
        dep = read_result_file(f).record
        why = weights_problem(f) if dep is not None and dep.run_id == want else \
            f"it holds run {dep.run_id if dep else 'none'}, not {want}"
        if why:
            raise CheckpointError(f"cannot serve {rec.run_id}: {why}", file=str(f),
                                  fix="point at the run's own folder (and mt_a_folder at its MT-A run) with the "
                                      "weights it trained: afbench run EXPERIMENT --only <id> trains them")
    compute = Compute.of(ComputeSpec.model_validate(rec.compute_config))  # precision auto: fp32 on the CPU
    if precision is not None:
        compute = dataclasses.replace(compute, precision=precision)
    model, tok = ready(BackboneSpec.model_validate(cfg["backbone"]), folder, compute, torch.device(device),
                       encoder_from)
    serving(model)  # trains nothing: frozen layers, their weights prepacked (the fast CPU kernels)
    activate(model, name)
    spec = TaskSpec.model_validate(cfg["tasks"][name])
    caps = Caps.model_validate(cfg.get("task_caps", {}).get(name) or cfg.get("caps") or {})
    return Predictor(rec.run_id, spec, model, tok, compute, torch.device(device),
                     MethodSpec.model_validate(cfg["method"]).train.eval_batch_size, capped_length(spec, caps.max_length))
