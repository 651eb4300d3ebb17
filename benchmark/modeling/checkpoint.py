"""Save and load adapters, fusion layers and heads (safetensors + a small JSON config).

Also reads adapters saved by AdapterHub (``adapter_config.json`` + ``pytorch_adapter.bin``), so the
paper's published adapters can be fused, and writes that format for the parity check. Pickled
``.bin`` files are loaded with ``weights_only=True``. Any mismatch is a CheckpointError naming the
file, the tensor and the expected and found shapes; loading is strict: every tensor of the selected
modules must be in the file with its shape (a stage-1 file whose adapter was stripped must not give
a fusion run over randomly initialised adapters). ``verify_weights`` checks a run folder the same way
without a model, so the runner can retrain a dependency whose weights are missing, partial or
unreadable. Writes that fail in the OS (disk full) raise a StorageError naming the file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from benchmark.data import published
from benchmark.errors import CheckpointError, StorageError
from benchmark.modeling.model import AdapterModel, Modules
from benchmark.spec.schema import AdapterParams, FusionParams

WEIGHTS = "weights.safetensors"
MODULES = "modules.json"


def save_modules(model: AdapterModel, folder: Path, *, adapters=(), fusions=(), heads=(), encoder=False,
                 state: dict | None = None) -> None:
    """Write ``weights.safetensors`` + ``modules.json`` (atomically, each via a temp file)."""
    folder.mkdir(parents=True, exist_ok=True)
    sel = Modules(tuple(adapters), tuple(fusions), tuple(heads), encoder)
    state = state if state is not None else model.state_of(sel)
    meta = {
        "hidden_size": model.hidden_size,
        "num_layers": len(model.encoder.encoder.layer),
        "adapters": {a: model.adapter_params[a].model_dump() for a in adapters},
        "fusions": {f: {"adapters": model.fusion_params[f][0], "params": model.fusion_params[f][1].model_dump()}
                    for f in fusions},
        "heads": {h: list(model.head_specs[h]) for h in heads},
        "encoder": bool(encoder),
    }
    tmp = folder / f".{WEIGHTS}.tmp{os.getpid()}"
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        os.replace(tmp, folder / WEIGHTS)
        tmp = folder / f".{MODULES}.tmp{os.getpid()}"
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, folder / MODULES)
    except (OSError, SafetensorError) as e:
        tmp.unlink(missing_ok=True)
        raise StorageError.from_os_error(folder / tmp.name.split(".tmp")[0].lstrip("."), e) from None


def _load_tensors(model: AdapterModel, tensors: dict, file: str, expected: set[str] | None = None) -> None:
    """Check names and shapes, then load. ``expected``: keys that must all be present (strict)."""
    own = model.state_dict()
    missing = sorted((expected or set()) - set(tensors))
    if missing:
        raise CheckpointError(
            f"{len(missing)} tensor(s) of the selected modules are not in the file, e.g. '{missing[0]}' "
            "(a partial or stripped weights file)", file=file,
            fix="retrain the run that wrote it (delete its folder or run with --force)")
    for k, v in tensors.items():
        if k not in own:
            raise CheckpointError(f"tensor '{k}' has no place in this model", file=file,
                                  fix="load it into a model of the same architecture and adapter setup")
        if tuple(own[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"tensor '{k}' has shape {tuple(v.shape)} but the model expects {tuple(own[k].shape)}",
                file=file, fix="use weights trained on the same backbone (hidden size, layers) and reduction factor",
            )
    model.load_state_dict(tensors, strict=False)


def load_modules(model: AdapterModel, folder: Path, *, adapters=None, fusions=None, heads=None,
                 encoder: bool | None = None, rename: dict[str, str] | None = None) -> dict:
    """Add the saved modules to ``model`` (creating adapters / fusions / heads) and load their weights.

    ``None`` selects everything the folder has; ``rename`` maps saved adapter names to new ones.
    Returns the folder's modules.json.
    """
    folder = Path(folder)
    wfile, mfile = folder / WEIGHTS, folder / MODULES
    for f in (wfile, mfile):
        if not f.exists():
            raise CheckpointError(f"missing {f.name}", file=str(folder),
                                  fix="point at a run folder that finished (it holds weights.safetensors and modules.json)")
    meta = read_meta(mfile)
    if meta["hidden_size"] != model.hidden_size or meta["num_layers"] != len(model.encoder.encoder.layer):
        raise CheckpointError(
            f"saved for hidden size {meta['hidden_size']} x {meta['num_layers']} layers, but the model has "
            f"{model.hidden_size} x {len(model.encoder.encoder.layer)}", file=str(mfile),
            fix="load it into the backbone it was trained on")
    rename = rename or {}
    adapters = list(meta["adapters"]) if adapters is None else list(adapters)
    fusions = list(meta["fusions"]) if fusions is None else list(fusions)
    heads = list(meta["heads"]) if heads is None else list(heads)
    encoder = meta["encoder"] if encoder is None else encoder
    for a in adapters:
        if a not in meta["adapters"]:
            raise CheckpointError(f"no adapter '{a}' saved here (have {sorted(meta['adapters'])})", file=str(mfile))
        new = rename.get(a, a)
        if new not in model.adapter_params:
            model.add_adapter(new, AdapterParams(**meta["adapters"][a]))
    for f in fusions:
        info = meta["fusions"][f]
        if f not in model.fusion_params:
            model.add_fusion(f, [rename.get(a, a) for a in info["adapters"]], FusionParams(**info["params"]))
    for h in heads:
        if h not in model.heads:
            model.add_head(h, *meta["heads"][h])
    try:
        tensors = load_file(str(wfile))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the weights ({type(e).__name__}: {str(e)[:200]})", file=str(wfile),
                              fix="the file is damaged or not safetensors: retrain the run that wrote it "
                                  "(delete its folder or run with --force)") from None
    sel = Modules(tuple(rename.get(a, a) for a in adapters), tuple(fusions), tuple(heads), encoder)
    back = {new: old for old, new in rename.items()}
    expected = {k: _rename_key(k, back) for k in model.keys_of(sel)}  # key in the model -> key in the file
    chosen = {k: tensors[saved] for k, saved in expected.items() if saved in tensors}
    _load_tensors(model, chosen, str(wfile), set(expected))  # strict: every tensor of the selection
    return meta


_META_KEYS = {"hidden_size": int, "num_layers": int, "adapters": dict, "fusions": dict, "heads": dict, "encoder": bool}


def read_meta(mfile: Path) -> dict:
    """modules.json, checked for the keys and types this module writes (CheckpointError naming the file)."""
    try:
        meta = json.loads(mfile.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read the module list ({type(e).__name__}: {str(e)[:200]})", file=str(mfile),
                              fix="retrain the run that wrote it (delete its folder or run with --force)") from None
    bad = [k for k, t in _META_KEYS.items() if not isinstance(meta, dict) or not isinstance(meta.get(k), t)]
    if bad:
        raise CheckpointError(f"the module list lacks or mistypes {bad}", file=str(mfile),
                              fix="retrain the run that wrote it (delete its folder or run with --force)")
    return meta


def expected_shapes(meta: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor the adapters, fusions and heads of a modules.json must have, with its shape.

    Built from the modules themselves on the meta device (no memory, no backbone), so it can never
    drift from what ``AdapterModel`` creates; the encoder's own tensors are not listed (their shapes
    depend on the backbone config, which the folder does not hold).
    """
    from benchmark.modeling.adapters import BottleneckAdapter
    from benchmark.modeling.fusion import AdapterFusion
    from benchmark.modeling.heads import make_head

    h, layers = meta["hidden_size"], meta["num_layers"]
    out: dict[str, tuple[int, ...]] = {}

    def add(prefix: str, module: torch.nn.Module) -> None:
        for k, v in module.state_dict().items():
            out[prefix + k] = tuple(v.shape)

    with torch.device("meta"):
        for name, params in meta["adapters"].items():
            p = AdapterParams(**params)
            where = ["output"] if p.type == "pfeiffer" else ["attention.output", "output"]
            module = BottleneckAdapter(h, p)
            for i in range(layers):
                for loc in where:
                    add(f"encoder.encoder.layer.{i}.{loc}.adapters.{name}.", module)
        for name, info in meta["fusions"].items():
            module = AdapterFusion(h, info["adapters"], FusionParams(**info["params"]), 0.0)
            for i in range(layers):
                add(f"encoder.encoder.layer.{i}.output.fusions.{name}.", module)
        for name, (task_type, num_labels, *rest) in meta["heads"].items():
            add(f"heads.{name}.", make_head(task_type, h, num_labels, 0.0, *rest))
    return out


def verify_weights(folder: Path) -> str | None:
    """None if a run folder's weights can be loaded, else a one-line reason (missing, partial, unreadable).

    Reads the safetensors header only (names and shapes, not the data), so it is cheap enough to call
    for every finished dependency before a grid starts.
    """
    folder = Path(folder)
    wfile, mfile = folder / WEIGHTS, folder / MODULES
    for f in (wfile, mfile):
        if not f.is_file():
            return f"missing: {f.name} is not in {folder.name}"
    try:
        meta = read_meta(mfile)
        expected = expected_shapes(meta)
    except CheckpointError as e:
        return f"unreadable: {mfile.name}: {e.message}"
    except Exception as e:  # noqa: BLE001 - modules.json names params this code cannot build
        return f"unreadable: {mfile.name} describes modules that cannot be built ({type(e).__name__}: {str(e)[:120]})"
    try:
        with safe_open(str(wfile), framework="pt") as fh:
            found = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, a truncated header
        return f"unreadable: {wfile.name}: {type(e).__name__}: {str(e)[:160]}"
    size = wfile.stat().st_size
    missing = sorted(k for k in expected if k not in found)
    if missing:
        return f"partial: {len(missing)} of {len(expected)} tensors of the declared modules are missing from " \
               f"{wfile.name}, e.g. '{missing[0]}'"
    wrong = sorted(k for k, shape in expected.items() if found[k] != shape)
    if wrong:
        k = wrong[0]
        return f"partial: '{k}' in {wfile.name} has shape {found[k]}, the declared module needs {expected[k]}"
    if meta["encoder"] and not any(k.startswith("encoder.") and ".adapters." not in k and ".fusions." not in k
                                   for k in found):
        return f"partial: modules.json declares the encoder but {wfile.name} holds no encoder tensor"
    if size < 8:
        return f"unreadable: {wfile.name} is {size} bytes"
    return None


def _rename_key(key: str, rename: dict[str, str]) -> str:
    for old, new in rename.items():
        key = key.replace(f".adapters.{old}.", f".adapters.{new}.")
    return key


# ---------------------------------------------------------------------------------------- AdapterHub
_HUB_KEY = re.compile(
    r"(?:^|\.)encoder\.layer\.(\d+)\.(attention\.output|output)\.adapters\.([^.]+)\.adapter_(down\.0|up)\.(weight|bias)$"
)


def adapterhub_params(config: dict, file: str) -> AdapterParams:
    """AdapterHub's adapter config as ours; a config we cannot compute exactly is refused with the keys
    that differ (``data/published.py``)."""
    return published.adapter_params(config, file)


def load_adapterhub(model: AdapterModel, folder: Path, name: str | None = None) -> str:
    """Load an AdapterHub adapter folder into ``model``; returns the adapter's name in the model."""
    folder = Path(folder)
    cfile, wfile = folder / "adapter_config.json", folder / "pytorch_adapter.bin"
    if not wfile.exists() and (folder / "adapter.safetensors").exists():
        wfile = folder / "adapter.safetensors"  # save_adapter(..., use_safetensors=True)
    if not cfile.exists() or not wfile.exists():
        raise CheckpointError("an AdapterHub adapter folder holds adapter_config.json and pytorch_adapter.bin "
                              "(or adapter.safetensors)",
                              file=str(folder), fix="point at the folder that save_adapter() wrote")
    config = json.loads(cfile.read_text())
    params = adapterhub_params(config, str(cfile))
    try:
        state = load_file(str(wfile)) if wfile.suffix == ".safetensors" else \
            torch.load(wfile, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot read the weights safely ({type(e).__name__}: {str(e)[:200]})", file=str(wfile),
                              fix="only plain tensor state dicts are accepted (weights_only=True)") from None
    saved_name = config.get("name")
    name = name or saved_name
    mapped = {}
    for k, v in state.items():
        m = _HUB_KEY.search(k)
        if not m:
            continue
        layer, loc, _, part, kind = m.groups()
        ours = "down" if part == "down.0" else "up"
        mapped[f"encoder.encoder.layer.{layer}.{loc}.adapters.{name}.{ours}.{kind}"] = v
    if not mapped:
        raise CheckpointError("no adapter tensors found (expected keys like "
                              "'...encoder.layer.0.output.adapters.NAME.adapter_down.0.weight')", file=str(wfile))
    if name not in model.adapter_params:
        model.add_adapter(name, params)
    expected = set(model.keys_of(Modules(adapters=[name])))
    missing = sorted(expected - set(mapped))
    if missing:
        raise CheckpointError(f"{len(missing)} adapter tensors missing, e.g. '{missing[0]}'", file=str(wfile),
                              fix="check that the adapter was trained for a model with this many layers")
    _load_tensors(model, mapped, str(wfile))
    return name


def export_adapterhub_state(model: AdapterModel, name: str, prefix: str) -> dict:
    """Our adapter ``name`` as AdapterHub state-dict keys (``{prefix}.encoder.layer...``)."""
    out = {}
    for k, v in model.state_dict().items():
        m = re.match(r"encoder\.encoder\.layer\.(\d+)\.(attention\.output|output)\.adapters\.([^.]+)\.(down|up)\.(weight|bias)$", k)
        if m and m.group(3) == name:
            part = "adapter_down.0" if m.group(4) == "down" else "adapter_up"
            out[f"{prefix}.encoder.layer.{m.group(1)}.{m.group(2)}.adapters.{name}.{part}.{m.group(5)}"] = v.clone()
    return out
