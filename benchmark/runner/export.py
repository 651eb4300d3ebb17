"""``afbench export``: finished runs -> folders in AdapterHub's save format (``adapters`` 1.3.0).

Per run, ``OUT/<run id>/`` holds what ``AutoAdapterModel.from_pretrained`` / ``load_adapter`` /
``load_adapter_fusion`` / ``load_head`` read:

    base/                    the encoder (save_pretrained + tokenizer) when it is not a Hub checkpoint:
                             random or packaged backbones, and encoders the method tuned (Full, MT-A,
                             Fusion w/ MT-A); otherwise export.json names the Hub id
    adapters/<name>/         adapter_config.json + pytorch_adapter.bin (for fusion: every fused source)
    fusion/                  adapter_fusion_config.json + pytorch_model_adapter_fusion.bin
    heads/<task>/            head_config.json + pytorch_model_head.bin
    samples/<task>.json      input_ids, attention_mask (token_type_ids), our logits for a few dev rows
    export.json              base, adapters {name: folder}, fusion, head, head_loader, sample, active, notes
    heads/mean_pooling.py    where a head reads the masked mean (MiniLM): AdapterHub heads of our own type
                             (``mean_pooling_head.py``); export.json's ``head_loader`` and each sample name it

A mean-pooling head is written with ``head_type: afbench_mean_*``, which ``load_head`` refuses until the
loader registers it, so nothing loads a head that disagrees with the samples' logits. OUT's manifest
(``.afbench-export.json``) names what an export wrote: only that is ever replaced (``_Out``; docs/adapterhub.md).
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError

from benchmark import adapterhub
from benchmark.errors import BenchError, DataError, StorageError
from benchmark.modeling.backbone import load_encoder, load_tokenizer
from benchmark.modeling.checkpoint import MODULES, load_modules, read_meta
from benchmark.modeling.compute import Compute
from benchmark.modeling.model import AdapterModel, Fuse, Modules
from benchmark.paths import pid_alive, swap_in, write_atomic
from benchmark.plan.run import Plan, Run
from benchmark.records import read_result_file
from benchmark.runner.borrowed import borrowed
from benchmark.spec.registry import Registry

SAMPLE_ROWS = 4
LOADER = "heads/mean_pooling.py"  # adapterhub/mean_pooling_head.py, copied where a head reads the masked mean (MiniLM)


@dataclass
class Exported:
    run_id: str
    folder: Path | None  # None: refused (``refused`` says why and what to do)
    notes: list[str] = field(default_factory=list)
    refused: str | None = None


MANIFEST = ".afbench-export.json"  # in --out: the run folders this program wrote there, with their files
_LEFTOVER = re.compile(r"^\.(?P<rid>.+)\.afbench-export-(?P<kind>tmp|old)(?P<pid>\d+)$")
# the names of the same temporary folders before the manifest (``.<run id>.tmpPID`` / ``.oldPID``)
_LEGACY = re.compile(r"^\.(?P<rid>[^.]+)\.(?P<kind>tmp|old)(?P<pid>\d+)$")


class _Out:
    """The export root. It owns only the run folders its manifest names, and in them only the files it
    wrote: a re-export replaces those and moves everything else (a user's notes) into the new folder; a
    folder it did not write, or a symbolic link, is refused, never replaced or written through."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.file = self.root / MANIFEST
        try:
            doc = json.loads(self.file.read_text()) if self.file.is_file() and not self.file.is_symlink() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            doc = {}
        runs = doc.get("runs") if isinstance(doc, dict) else None
        self.runs: dict[str, list[str]] = runs if isinstance(runs, dict) else {}

    def owned(self, rid: str) -> set[str]:
        files = self.runs.get(rid)
        return set(files) if isinstance(files, list) else set()

    def check(self, rid: str) -> None:
        """Refuse ``root/rid`` where it exists and is not a folder this export wrote."""
        final = self.root / rid
        if not os.path.lexists(final):
            return
        why = ("is a symbolic link (an export never writes through one)" if final.is_symlink() else
               "is not a folder" if not final.is_dir() else
               None if rid in self.runs else f"was not written by afbench export (it is not in {MANIFEST})")
        if why:
            raise BenchError(f"{final} {why}; an export replaces only the run folders it wrote itself, and "
                             "nothing in this one has been changed", file=str(final), field="--out",
                             fix="move or rename it, or export into another --out")

    def record(self, rid: str, files: list[str]) -> None:
        self.runs[rid] = files
        write_atomic(self.file, json.dumps({"format": 1, "runs": self.runs}, indent=1, sort_keys=True) + "\n",
                     root=self.root, kept="the exported folders are complete", fix="free space on --out's disk")

    def clean(self) -> list[str]:
        """What a killed export left: its temp folders (removed) and the previous folder of a swap cut in
        the middle (put back, or its files not written by the export moved into the new folder)."""
        done = []
        for p in sorted(self.root.iterdir()):
            m = _LEFTOVER.match(p.name) or _LEGACY.match(p.name)  # the two patterns never match the same name
            legacy = m is not None and m.re is _LEGACY
            if not m or p.is_symlink() or not p.is_dir() or pid_alive(int(m["pid"])):
                continue
            if not legacy and m["kind"] == "old" and m["rid"] not in self.runs:  # a run the manifest does not list
                continue
            final = self.root / m["rid"]
            if m["kind"] == "tmp":  # an unfinished folder of a killed export: nobody's data
                shutil.rmtree(p)
            elif not os.path.lexists(final):  # a swap cut between its two renames: the previous export back
                swap_in(p, final)
            elif legacy:  # the previous export of a finished swap, from before the manifest: left, and said
                print(f"  {p.name}: the previous export of {m['rid']} left by an older afbench "
                      "(remove it if nothing in it is yours)")
                continue
            elif final.is_dir() and not final.is_symlink() and not _carry(p, final, self.owned(m["rid"])):
                shutil.rmtree(p)
            done.append(p.name)
        return done


def _entries(folder: Path, rel: str = "") -> list[str]:
    """Every file, link and empty folder under ``folder`` (links are not followed), relative to it."""
    out = []
    with os.scandir(folder / rel if rel else folder) as it:
        for e in it:
            r = f"{rel}/{e.name}" if rel else e.name
            sub = _entries(folder, r) if e.is_dir(follow_symlinks=False) else None
            out += [r] if sub is None or not sub else sub
    return out


def _carry(old: Path, new: Path, owned: set[str]) -> list[str]:
    """Move what the export did not write from ``old`` to the same place under ``new`` (``NAME.kept``
    where the new export wrote that name); returns what could not be moved (``old`` is then kept)."""
    left = []
    for rel in _entries(old):
        if rel in owned:
            continue
        src, dst = old / rel, new / rel
        if os.path.lexists(dst):
            dst = dst.with_name(dst.name + ".kept")
        try:
            if os.path.lexists(dst):
                raise FileExistsError(dst)
            dst.parent.mkdir(parents=True, exist_ok=True)
            swap_in(src, dst)
        except OSError:
            left.append(rel)
    return left


class _Writer:
    """Files under one temp folder that must stay under ``root``; ``commit`` renames it into place."""

    def __init__(self, root: Path, name: str, out: _Out | None = None):
        self.root = root.resolve()
        self.out = out or _Out(self.root)
        self.out.check(name)
        self.kept_old: Path | None = None  # the previous folder, where a file of the user's could not be moved
        self.final = self.inside(self.root / name)
        self.tmp = self.inside(self.root / f".{name}.afbench-export-tmp{os.getpid()}")
        if self.tmp.is_dir() and not self.tmp.is_symlink():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)

    def inside(self, path: Path) -> Path:
        p = path.parent.resolve() / path.name  # the last part is not followed: a link there is refused elsewhere
        if not p.is_relative_to(self.root) or p == self.root or path.name in ("", ".", ".."):
            raise BenchError(f"export path {path} would lie outside the output folder {self.root}",
                             field="--out", fix="use task and adapter names without path separators or '..'")
        return p

    def json(self, rel: str, data: dict) -> str:
        return self.text(rel, json.dumps(data, indent=2) + "\n")

    def text(self, rel: str, text: str) -> str:
        write_atomic(self.inside(self.tmp / rel), text)  # it makes the folder
        return rel

    def tensors(self, rel: str, state: dict) -> None:
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buf)
        write_atomic(self.inside(self.tmp / rel), buf.getvalue())

    def commit(self) -> Path:
        """Swap the temp folder in; files of the previous folder the export did not write move into the new one."""
        files = sorted(_entries(self.tmp))
        old = self.final.with_name(f".{self.final.name}.afbench-export-old{os.getpid()}")
        if not swap_in(self.tmp, self.final, old):  # a real folder of ours moved: ``_Out.check`` refused anything else
            old = None
        left = _carry(old, self.final, self.out.owned(self.final.name)) if old else []
        self.out.record(self.final.name, files)
        if old and not left:
            shutil.rmtree(old)
        self.kept_old = old if left else None
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def rebuild(bspec, folder: Path, tok, encoder_from: Path | None = None) -> AdapterModel:
    """A finished run's trained model, in eval mode: the backbone ``bspec`` + everything ``folder`` saved (+ the
    tuned encoder of the MT-A run in ``encoder_from``, which a Fusion w/ MT-A run fused on and did not save)."""
    model = AdapterModel(load_encoder(bspec, tok))
    if encoder_from is not None:
        load_modules(model, encoder_from, adapters=[], fusions=[], heads=[], encoder=True)
    load_modules(model, folder)
    model.eval()
    return model


def build_model(run: Run, reg: Registry, run_dir, tok) -> AdapterModel:
    """The run's trained model (``rebuild``; the MT-A encoder from its dependency's folder for Fusion w/ MT-A)."""
    return rebuild(reg.backbones[run.backbone], run_dir(run.id), tok,
                   run_dir(run.deps[0]) if run.kind.depends_on == "mt_a" else None)


def ready(bspec, folder: Path, compute: Compute, device: torch.device,
          encoder_from: Path | None = None) -> tuple[AdapterModel, object]:
    """(model in eval mode on ``device``, tokenizer): ``rebuild`` with ``compute`` checked and applied (compiled
    batches padded with the tokenizer's pad id), nothing active yet."""
    tok = load_tokenizer(bspec)
    model = rebuild(bspec, folder, tok, encoder_from)
    compute.check(device)
    compute.apply(model, tok.pad_token_id)
    return model.to(device), tok


def load_for_eval(run: Run, reg: Registry, run_dir, device: torch.device) -> tuple[AdapterModel, object, Compute]:
    """(model, tokenizer, compute) of a planned run (``ready``; the MT-A encoder from its dependency's folder for
    Fusion w/ MT-A); ``predict``, ``prune`` and ``speed`` use it."""
    compute = Compute.of(run.compute)
    model, tok = ready(reg.backbones[run.backbone], run_dir(run.id), compute, device,
                       run_dir(run.deps[0]) if run.kind.depends_on == "mt_a" else None)
    return model, tok, compute


def activate(model: AdapterModel, task: str):
    """Set what the run evaluated ``task`` with: its fusion, the task's adapter, or none; returns it."""
    fusion = next(iter(model.fusion_params), None)
    setup = Fuse(fusion) if fusion else (task if task in model.adapter_params else None)
    model.set_active(setup)
    return setup


def _sample(run: Run, reg: Registry, model: AdapterModel, tok, task_name: str, data_dir) -> dict:
    from benchmark.data.encode import collate
    from benchmark.training.recipe import dev_split

    dev = dev_split(reg, data_dir, run, reg.tasks[task_name], tok)
    batch = collate(dev.examples[:SAMPLE_ROWS], tok.pad_token_id)  # [B, L] or [B, K, L]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        logits = model(head=task_name, **inputs)  # [B, C] / [B, K]
    return {**{k: v.tolist() for k, v in inputs.items()}, "logits": logits.tolist(), "labels": batch["labels"].tolist()}


def export_run(run: Run, reg: Registry, run_dir, out: Path, data_dir=None, owner: _Out | None = None) -> Exported:
    """Write ``out/<run id>/`` for one finished run (see the module docstring)."""
    bspec = reg.backbones[run.backbone]
    tok = load_tokenizer(bspec)
    model = build_model(run, reg, run_dir, tok)
    model_type = model.config.model_type
    if model_type not in adapterhub.MODEL_CLASS:
        raise adapterhub.Inexpressible(f"AdapterHub export supports BERT and RoBERTa encoders, not {model_type!r}",
                                       fix="export runs on a BERT or RoBERTa backbone")
    model_class, prefix = adapterhub.MODEL_CLASS[model_type], type(model.encoder).base_model_prefix
    configs = {name: adapterhub.adapter_config(params) for name, params in model.adapter_params.items()}  # or refused
    if any(fparams.mixing == "static" for _, fparams in model.fusion_params.values()):
        raise adapterhub.Inexpressible(f"AdapterHub {adapterhub.VERSION} has no static mixing (fusion.mixing: static, "
                                       "one softmax per layer and no Query/Key)",
                                       fix="export the runs of a method AdapterHub can load (docs/adapterhub.md)")
    tuned = read_meta(Path(run_dir(run.id)) / MODULES)["encoder"] or run.kind.depends_on == "mt_a"
    hub_base = bspec.source == "hub" and not tuned
    model_name = bspec.model_id if bspec.source == "hub" else ""
    meta = lambda name: adapterhub.meta(name, model.hidden_size, model_class, model_type, model_name)  # noqa: E731
    try:
        w = _Writer(out, run.id, owner)
    except OSError as e:
        raise _storage_error(out / run.id, e) from None
    notes: list[str] = []
    try:
        doc: dict = {"run_id": run.id, "experiment": run.experiment, "method": run.label, "backbone": run.backbone,
                     "task": run.task, "tasks": run.all_tasks, "format": adapterhub.VERSION, "model_class": model_class}
        if hub_base:
            doc["base"] = bspec.model_id
        else:
            doc["base"] = _write_base(w, model, bspec, tok)
            if tuned:
                notes.append("the method tuned the encoder: base/ holds the tuned encoder, load it as the base model")
        doc["adapters"] = {}
        for name, config in configs.items():
            rel = f"adapters/{name}"
            w.json(f"{rel}/adapter_config.json", {"config": config, **meta(name)})
            state = model.state_of(Modules(adapters=[name]))
            w.tensors(f"{rel}/pytorch_adapter.bin", adapterhub.to_hub(state, prefix))
            doc["adapters"][name] = rel
        doc["fusion"] = None
        for fname, (sources, fparams) in model.fusion_params.items():
            hub_name = ",".join(sources)
            w.json("fusion/adapter_fusion_config.json", {"adapter_names": sources,
                                                         "config": adapterhub.FUSION.config(fparams),
                                                         **meta(hub_name)})
            w.tensors("fusion/pytorch_model_adapter_fusion.bin",
                      adapterhub.to_hub(model.state_of(Modules(fusions=[fname])), prefix, {fname: hub_name}))
            doc["fusion"], doc["fusion_adapters"] = "fusion", list(sources)
            if fparams.temperature:
                notes.append("fusion trained with an annealed softmax temperature; it ends at T = 1, which is "
                             "AdapterHub's inference (temperature: false)")
        heads, samples, active, loader = {}, {}, {}, None
        for t in run.all_tasks:
            setup = activate(model, t)
            active[t] = {"fuse": doc["fusion_adapters"]} if isinstance(setup, Fuse) else setup
            pooling = model.head_specs[t][2]
            if pooling != "cls":  # AdapterHub's heads read the first token: a head type of our own, and its loader
                loader = w.text(LOADER, adapterhub.MEAN_POOLING_HEAD.read_text())
            rel = f"heads/{t}"
            w.json(f"{rel}/head_config.json", {"config": adapterhub.head_config(reg.tasks[t], pooling), **meta(t)})
            w.tensors(f"{rel}/pytorch_model_head.bin", adapterhub.head_state(model.state_of(Modules(heads=[t])), t))
            heads[t] = rel
            try:
                sample = _sample(run, reg, model, tok, t, data_dir)
                if pooling != "cls":
                    sample["head_loader"] = LOADER  # these logits read the masked mean: load_head needs it
                samples[t] = w.json(f"samples/{t}.json", sample)
            except DataError as e:
                samples[t] = None
                notes.append(f"no sample for '{t}': {e.message}")
        for key, per_task in (("head", heads), ("sample", samples), ("active", active)):  # a multi-task run: all
            doc[key] = per_task[run.task] if run.task is not None else per_task
        doc["head_loader"] = loader
        if loader:
            notes.append(f"mean-pooling head: AdapterHub's heads read the first token, so load_head needs "
                         f"runpy.run_path(f'{{d}}/{loader}')['register'](model) first (docs/adapterhub.md)")
        doc["notes"] = notes
        w.json("export.json", doc)
        folder = w.commit()
        if w.kept_old:
            notes.append(f"kept {w.kept_old.name}: it holds files afbench did not write that could not be moved "
                         "into the new folder")
        return Exported(run.id, folder, notes)
    except BaseException as e:
        w.abort()
        # an OSError, or safetensors' own error for one (it carries "os error N" in its text)
        if isinstance(e, OSError) or (isinstance(e, SafetensorError) and "os error" in str(e)):
            raise _storage_error(w.final, e) from None
        raise


def _storage_error(path: Path, e: Exception) -> StorageError:
    """One paragraph for a failed write under ``--out``. safetensors reports the OS error only in its text
    ("... No space left on device (os error 28)"), so its errno is read from there."""
    if not isinstance(e, OSError):
        m = re.search(r"os error (\d+)", str(e))
        e = OSError(int(m.group(1)) if m else errno.EIO, os.strerror(int(m.group(1))) if m else str(e))
    where = Path(path).parent
    return StorageError.from_os_error(path, e, kept="runs exported before are complete (each is written to a temp "
                                                    "folder and renamed into place) and no partial export is left",
                                      fix=f"free space (or fix permissions) on the file system of {where}, or give "
                                          "another --out")


def _write_base(w: _Writer, model: AdapterModel, bspec, tok) -> str:
    """The encoder's own weights as a plain transformers model folder (no adapter slots)."""
    clean = load_encoder(bspec, tok)
    state = {k.removeprefix("encoder."): v for k, v in model.state_of(Modules(encoder=True)).items()}
    clean.load_state_dict(state, strict=True)
    folder = w.inside(w.tmp / "base")  # save_pretrained makes it
    clean.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return "base"


def refuse_overlap(out: Path, keep_clear: list[tuple[str, Path]]) -> None:
    """--out may neither lie inside nor contain the results root, a spec folder or the data: an export
    replaces run folders under --out, and the results keep their runs in folders of the same names (``afbench
    push`` stages its dataset under the same rule)."""
    o = out.resolve()
    for what, p in keep_clear:
        q = Path(p).resolve()
        if o == q or o.is_relative_to(q) or q.is_relative_to(o):
            raise BenchError(f"--out {out} overlaps {what} {p}: an export (or push) writes its folders under --out, so "
                             "it must neither lie inside nor contain finished results or specs; nothing was written",
                             field="--out", fix=f"export into a folder of its own outside {p}, e.g. --out exports")


def export_plan(plan: Plan, reg: Registry, exp_dir: Path, out: Path, *, only: list[str] | None = None,
                data_dir=None, echo=print, keep_clear: list[tuple[str, Path]] = ()) -> list[Exported]:
    """Export every finished run of ``plan`` (whose id matches a glob of ``only``) under ``out``, which must
    not overlap the results root (``exp_dir``'s parent) or the folders of ``keep_clear`` ((what, folder) pairs).
    A run AdapterHub cannot load as we compute it (``adapterhub.Inexpressible``) is refused with one line and
    returned with ``refused`` set; the others are exported."""
    refuse_overlap(out, [("the results root", exp_dir.parent), *keep_clear])
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        owner = _Out(out)
        for name in owner.clean():
            echo(f"cleaned {name}, left by an export that was killed")
    except OSError as e:
        raise _storage_error(out, e) from None
    lent = borrowed(plan, exp_dir.parent)  # an MT-A run read from another experiment (dependencies_from)
    runs = [r for r in plan.matching(only) if read_result_file(exp_dir / r.id).finished]
    for run in runs:
        owner.check(run.id)  # every folder in the way is refused before anything is written
    done = []
    for run in runs:
        try:
            e = export_run(run, reg, lambda rid: lent.get(rid, exp_dir / rid), out, data_dir, owner)
        except adapterhub.Inexpressible as x:  # one line; the other runs go out
            echo(f"refused {run.id}: {x.reason}; {x.fix}")
            done.append(Exported(run.id, None, refused=f"{x.reason}; {x.fix}"))
            continue
        except StorageError:
            if created and not any(d.folder for d in done):
                shutil.rmtree(out, ignore_errors=True)  # nothing exported: leave no empty --out behind
            raise
        echo(f"exported {run.id} -> {e.folder}")
        for n in e.notes:
            echo(f"  note: {n}")
        done.append(e)
    return done
