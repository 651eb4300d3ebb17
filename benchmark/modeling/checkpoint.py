"""Save and load adapters, fusion layers and heads (safetensors + a small JSON config).

Also reads adapters saved by AdapterHub (``adapter_config.json`` + ``pytorch_adapter.bin``, the format in
``benchmark/adapterhub``), so the paper's published adapters can be fused. Pickled ``.bin`` files are loaded with ``weights_only=True``. Any mismatch is a CheckpointError naming the
file, the tensor and the expected and found shapes; loading is strict: every tensor of the selected
modules must be in the file with its shape (a stage-1 file whose adapter was stripped must not give
a fusion run over randomly initialised adapters). ``verify_weights`` checks a run folder the same way
without a model, so the runner can retrain a dependency whose weights are missing, partial or
unreadable. Writes that fail in the OS (disk full) raise a StorageError naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from benchmark import adapterhub
from benchmark.errors import CheckpointError, StorageError
from benchmark.modeling.fusion import build_fusion
from benchmark.modeling.heads import make_head
from benchmark.modeling.layout import FUSION_LOCATION, LAYOUTS, LOCATIONS
from benchmark.modeling.model import AdapterModel, Modules, adapter_type, params_from
from benchmark.paths import write_atomic
from benchmark.spec.schema import FusionParams


def layout_for_keys(family: str):
    """The layout that spells a modules.json's keys (files written before layouts name none: "bert")."""
    if family not in LAYOUTS:
        raise CheckpointError(f"modules.json names encoder family '{family}', which has no layout here",
                              fix="add its layout to benchmark/modeling/layout.py")
    return LAYOUTS[family]


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
        "num_layers": model.num_layers,
        "adapters": {a: adapter_type(model.adapter_params[a]).describe(model, a) for a in adapters},
        "fusions": {f: {"adapters": model.fusion_params[f][0], "params": model.fusion_params[f][1].model_dump()}
                    for f in fusions},
        "heads": {h: list(model.head_specs[h]) for h in heads},
        "encoder": bool(encoder),
    }
    meta["family"] = model.layout.family  # files written before layouts have none: read as "bert"
    try:
        weights = save({k: v.contiguous() for k, v in state.items()})
    except SafetensorError as e:
        raise StorageError.from_os_error(folder / WEIGHTS, e) from None
    write_atomic(folder / WEIGHTS, weights)
    write_atomic(folder / MODULES, json.dumps(meta, indent=2))


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
                 encoder: bool | None = None) -> dict:
    """Add the saved modules to ``model`` (creating adapters / fusions / heads) and load their weights.

    ``None`` selects everything the folder has. Returns the folder's modules.json.
    """
    folder = Path(folder)
    wfile, mfile = folder / WEIGHTS, folder / MODULES
    for f in (wfile, mfile):
        if not f.exists():
            finished = (folder / "result.json").is_file()  # a finished run whose weights were not kept (git)
            raise CheckpointError(
                f"missing {f.name}" + (": the run finished, but its weights are not in this checkout (the "
                                       "repository keeps only the stage-1 weights its fusion and merge runs read)"
                                       if finished else ""), file=str(folder),
                fix=f"retrain it for its weights (afbench run EXPERIMENT --force --only {folder.name})" if finished
                else "point at a run folder that finished (it holds weights.safetensors and modules.json)")
    meta = read_meta(mfile)
    if meta["hidden_size"] != model.hidden_size or meta["num_layers"] != model.num_layers:
        raise CheckpointError(
            f"saved for hidden size {meta['hidden_size']} x {meta['num_layers']} layers, but the model has "
            f"{model.hidden_size} x {model.num_layers}", file=str(mfile),
            fix="load it into the backbone it was trained on")
    family, lay = meta.get("family", "bert"), model.layout
    saved = layout_for_keys(family)  # its adapters and fusions load here when their keys are spelt alike
    if saved.layers != lay.layers or any(saved.sublayer(loc) != lay.sublayer(loc) for loc in LOCATIONS):
        raise CheckpointError(f"saved from a '{family}' encoder, but the model is '{model.layout.family}'",
                              file=str(mfile), fix="load it into the backbone it was trained on")
    adapters = list(meta["adapters"]) if adapters is None else list(adapters)
    fusions = list(meta["fusions"]) if fusions is None else list(fusions)
    heads = list(meta["heads"]) if heads is None else list(heads)
    encoder = meta["encoder"] if encoder is None else encoder
    for a in adapters:
        if a not in meta["adapters"]:
            raise CheckpointError(f"no adapter '{a}' saved here (have {sorted(meta['adapters'])})", file=str(mfile))
        if a not in model.adapter_params:
            model.add_adapter(a, params_from(meta["adapters"][a]))
    for f in fusions:
        info = meta["fusions"][f]
        if f not in model.fusion_params:
            model.add_fusion(f, info["adapters"], FusionParams(**info["params"]))
    for h in heads:
        if h not in model.heads:
            model.add_head(h, *meta["heads"][h])
    try:
        tensors = load_file(str(wfile))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the weights ({type(e).__name__}: {str(e)[:200]})", file=str(wfile),
                              fix="the file is damaged or not safetensors: retrain the run that wrote it "
                                  "(delete its folder or run with --force)") from None
    expected = model.keys_of(Modules(tuple(adapters), tuple(fusions), tuple(heads), encoder))
    chosen = {k: tensors[k] for k in expected if k in tensors}
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
    h, layers = meta["hidden_size"], meta["num_layers"]
    layout = layout_for_keys(meta.get("family", "bert"))
    out: dict[str, tuple[int, ...]] = {}

    def add(prefix: str, module: torch.nn.Module) -> None:
        for k, v in module.state_dict().items():
            out[prefix + k] = tuple(v.shape)

    for name, d in meta["adapters"].items():  # each adapter type knows its keys and shapes
        params = params_from(d)
        out.update(adapter_type(params).expected_shapes(layout, meta, name, params))
    with torch.device("meta"):
        for name, info in meta["fusions"].items():
            module = build_fusion(h, info["adapters"], FusionParams(**info["params"]), 0.0)
            for i in range(layers):
                add(f"{layout.slot_prefix(i, FUSION_LOCATION)}fusions.{name}.", module)
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
    missing = sorted(k for k in expected if k not in found)
    if missing:
        return f"partial: {len(missing)} of {len(expected)} tensors of the declared modules are missing from " \
               f"{wfile.name}, e.g. '{missing[0]}'"
    wrong = sorted(k for k, shape in expected.items() if found[k] != shape)
    if wrong:
        k = wrong[0]
        return f"partial: '{k}' in {wfile.name} has shape {found[k]}, the declared module needs {expected[k]}"
    if meta["encoder"] and not any(k.startswith("encoder.") and k not in expected for k in found):
        return f"partial: modules.json declares the encoder but {wfile.name} holds no encoder tensor"
    return None


# ---------------------------------------------------------------------------------------- AdapterHub
def load_adapterhub(model: AdapterModel, folder: Path, name: str | None = None) -> str:
    """Load an AdapterHub adapter folder into ``model`` (configs and keys: ``benchmark/adapterhub``); returns the
    adapter's name in the model."""
    folder = Path(folder)
    cfile = folder / adapterhub.CONFIG
    if not cfile.exists() or not any((folder / w).exists() for w in adapterhub.WEIGHTS):
        raise CheckpointError("an AdapterHub adapter folder holds adapter_config.json and pytorch_adapter.bin "
                              "(or adapter.safetensors)",
                              file=str(folder), fix="point at the folder that save_adapter() wrote")
    lay = model.layout
    if any(lay.sublayer(loc).style != "output" for loc in LOCATIONS):  # AdapterHub's keys name the hosts we keep
        raise CheckpointError(f"reading AdapterHub adapters is supported for BERT-style layouts, not "
                              f"'{lay.family}'", fix="train the adapter with this benchmark instead")
    config = adapterhub.read_config(folder)
    params = adapterhub.adapter_params(config, str(cfile))
    wfile, state = adapterhub.read_weights(folder)  # the planner's reader: the same refusals, the same words
    name = name or config.get("name")
    if name not in model.adapter_params:
        model.add_adapter(name, params)
    own = model.state_dict()
    expected = {k: tuple(own[k].shape) for k in model.keys_of(Modules(adapters=[name]))}
    mapped = adapterhub.from_hub(state, expected, {name: config.get("name") or name})
    if not mapped:
        example = adapterhub.hub_key(next(iter(expected)), "", {name: config.get("name") or name})
        raise CheckpointError(f"no adapter tensors found (expected keys like '...{example}')", file=str(wfile))
    missing = sorted(set(expected) - set(mapped))
    if missing:
        raise CheckpointError(f"{len(missing)} adapter tensors missing, e.g. '{missing[0]}'", file=str(wfile),
                              fix="check that the adapter was trained for a model with this many layers")
    _load_tensors(model, mapped, str(wfile))
    return name
