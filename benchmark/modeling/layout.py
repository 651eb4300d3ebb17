"""Where things are inside each encoder family: one declaration per family, and the only place in the
package that spells a module path inside a transformers encoder. The rest of ``modeling/`` reads a ``Layout``:
attribute *names*, not code (the idea of AdapterHub's ``AdapterModelInterface``; ARCHITECTURE.md, "A new
encoder family").

Every post-LN encoder layer has two residual sub-layers (``attention``, then the feed-forward
``output``), each ending in ``LN(f + x)``: f the sub-layer's output projection (after its dropout), x
the sub-layer's input. A family exposes f in one of two ways:

* ``output`` style (BERT, RoBERTa, ELECTRA, DeBERTa-v2/v3): a module with ``dense`` / ``LayerNorm`` /
  ``dropout`` whose ``forward(h, x)`` is ``LN(dropout(dense(h)) + x)``; ``layers.AdaptedOutput``
  replaces it and keeps those three sub-modules under their names, so pretrained keys do not change.
* ``hook`` style (DistilBERT): the add and the LayerNorm happen in the layer's own forward; the module
  that returns f takes x as its first argument (``attention(x)``: f = ``out_lin(...)``; ``ffn(x)``:
  f = ``dropout(lin2(...))``). A forward hook on that module replaces f by the adapted f' with
  ``LN(f' + x)`` equal to what the adapter placement asks for (``layers.adapt``).

Pre-LN families (ModernBERT, most decoders) normalise *before* each sub-layer, so Pfeiffer's "after the
FFN output, between the pretrained LayerNorms" has no twin there: ``layout_for`` refuses them with the
reason, rather than inventing a placement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import nn

LOCATIONS = ("attention", "output")  # the two residual sub-layers of a layer, in forward order

# The Pfeiffer / Houlsby placement rule (AdapterHub seq_bn / double_seq_bn), in one place.
PLACEMENT: dict[str, tuple[str, ...]] = {"pfeiffer": ("output",), "houlsby": ("attention", "output")}
FUSION_LOCATION = "output"  # AdapterFusion sits where Pfeiffer adapters do
SLOT = "adapter_slot"  # hook style: the child of the host module that holds adapters and fusions


@dataclass(frozen=True)
class SubLayer:
    """One residual sub-layer of a layer; paths are relative to the layer."""

    host: str  # output style: the LN(dropout(dense(h)) + x) module; hook style: the module returning f
    norm: str  # the LayerNorm the family applies to f + x
    style: Literal["output", "hook"] = "output"


@dataclass(frozen=True)
class FirstToken:
    """A BERT-style attention the last layer can recompute for position 0 alone (paths relative to a layer)."""

    self_attention: str = "attention.self"  # has query / key / value, attention_head_size, scaling, dropout
    attention_output: str = "attention.output"
    intermediate: str = "intermediate"
    output: str = "output"


@dataclass(frozen=True)
class Layout:
    family: str  # the transformers ``config.model_type``
    layers: str  # path from the encoder to its ModuleList of layers
    attention: SubLayer
    output: SubLayer
    token_type_ids: bool = True  # the encoder's forward takes token_type_ids
    pooler: bool = True  # the model class takes ``add_pooling_layer`` (we always drop the pooler)
    first_token: FirstToken | None = None  # None: the last layer always runs in full (said once in the log)
    # the linear layers a tuner (``tuners.py``: LoRA, (IA)^3) may target: neutral name -> path of an nn.Linear
    linear_targets: dict[str, str] = field(default_factory=dict)
    random_init: dict[str, int | str] = field(default_factory=dict)  # random_init config: value or "tokenizer.<attr>"
    refused: str | None = None  # why this family cannot host adapters (pre-LN)

    def sublayer(self, location: str) -> SubLayer:
        if location not in LOCATIONS:
            raise ValueError(f"location must be one of {LOCATIONS}, got {location!r}")
        return self.attention if location == "attention" else self.output

    # ------------------------------------------------------------------ reaching into an encoder
    def layer_list(self, encoder: nn.Module) -> nn.ModuleList:
        return encoder.get_submodule(self.layers)

    def host(self, layer: nn.Module, location: str) -> nn.Module:
        return layer.get_submodule(self.sublayer(location).host)

    def set_host(self, layer: nn.Module, location: str, module: nn.Module) -> None:
        parent, _, name = self.sublayer(location).host.rpartition(".")
        setattr(layer.get_submodule(parent), name, module)

    def norm_of(self, layer: nn.Module, location: str) -> nn.Module:
        return layer.get_submodule(self.sublayer(location).norm)

    # ------------------------------------------------------------------ state-dict keys (no model needed)
    def slot_prefix(self, i: int, location: str) -> str:
        """State-dict prefix of the adapter slot of layer ``i`` at ``location`` inside an AdapterModel."""
        sub = self.sublayer(location)
        tail = sub.host if sub.style == "output" else f"{sub.host}.{SLOT}"
        return f"encoder.{self.layers}.{i}.{tail}."

    def target_prefix(self, i: int, target: str) -> str:
        """State-dict prefix of the target linear ``target`` of layer ``i`` inside an AdapterModel."""
        return f"encoder.{self.layers}.{i}.{self.linear_targets[target]}."


_BERT_LIKE = dict(
    layers="encoder.layer",
    attention=SubLayer("attention.output", "attention.output.LayerNorm"),
    output=SubLayer("output", "output.LayerNorm"),
)
_BERT_LINEARS = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
              "attention_output": "attention.output.dense", "intermediate": "intermediate.dense",
              "output": "output.dense"}

LAYOUTS: dict[str, Layout] = {}


def register(layout: Layout) -> Layout:
    LAYOUTS[layout.family] = layout
    return layout


def unregister(family: str) -> None:
    """Remove a layout (tests that add a hypothetical family clean up with this)."""
    LAYOUTS.pop(family, None)


register(Layout("bert", **_BERT_LIKE, first_token=FirstToken(), linear_targets=_BERT_LINEARS))
register(Layout("roberta", **_BERT_LIKE, first_token=FirstToken(), linear_targets=_BERT_LINEARS,
                random_init={"bos_token_id": "tokenizer.bos_token_id", "eos_token_id": "tokenizer.eos_token_id",
                             "type_vocab_size": 1}))
register(Layout("electra", **_BERT_LIKE, pooler=False, first_token=FirstToken(), linear_targets=_BERT_LINEARS))
register(Layout(  # v2 and v3 (v3 checkpoints are model_type deberta-v2); relative attention: no first-token row
    "deberta-v2", **_BERT_LIKE, pooler=False,
    linear_targets={**_BERT_LINEARS, "query": "attention.self.query_proj", "key": "attention.self.key_proj",
                  "value": "attention.self.value_proj"}))
register(Layout(
    "distilbert", layers="transformer.layer",
    attention=SubLayer("attention", "sa_layer_norm", "hook"),  # f = out_lin(context); x = the layer input
    output=SubLayer("ffn", "output_layer_norm", "hook"),  # f = dropout(lin2(act(lin1(x))))
    token_type_ids=False, pooler=False,
    linear_targets={"query": "attention.q_lin", "key": "attention.k_lin", "value": "attention.v_lin",
                  "attention_output": "attention.out_lin", "intermediate": "ffn.lin1", "output": "ffn.lin2"}))
register(Layout(
    "modernbert", layers="layers", attention=SubLayer("attn", "attn_norm"), output=SubLayer("mlp", "mlp_norm"),
    token_type_ids=False, pooler=False,
    refused="ModernBERT is pre-LN: its LayerNorms sit before each sub-layer, so the Pfeiffer placement (after the "
            "FFN output, between the pretrained post-sub-layer LayerNorms) and the fusion query h = LN(f + x) have no "
            "twin in it; the benchmark refuses it rather than invent a placement the paper never tested"))


def spec_family(spec) -> str | None:
    """A backbone spec's ``config.model_type`` as far as it can be told without torch or the network: its own
    ``model_type`` (random_init), the local folder's or the Hub cache's config.json; None where it cannot."""
    import json
    from pathlib import Path

    if spec.source == "random_init":
        return spec.model_type
    config = Path(spec.path) / "config.json" if spec.source == "local" else None
    if spec.source == "hub":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec.model_id, "config.json")
        config = Path(cached) if isinstance(cached, str) else None
    try:
        return json.loads(config.read_text()).get("model_type") if config else None
    except (OSError, ValueError, AttributeError):
        return None


def layout_for(family: str) -> Layout:
    """The layout of a ``config.model_type``; a clear error for a family without one or a refused one."""
    lay = LAYOUTS.get(family)
    if lay is None:
        have = sorted(f for f, other in LAYOUTS.items() if not other.refused)
        raise TypeError(f"no encoder layout for model_type '{family}' (have {', '.join(have)}); "
                        "add a Layout to benchmark/modeling/layout.py")
    if lay.refused:
        raise TypeError(f"model_type '{family}' is not supported: {lay.refused}")
    return lay


def layout_of(encoder: nn.Module) -> Layout:
    """The layout of a transformers encoder (by its config's model_type), checked against the module."""
    lay = layout_for(getattr(encoder.config, "model_type", type(encoder).__name__))
    try:
        layers = lay.layer_list(encoder)
        for i, layer in enumerate(layers):
            for loc in LOCATIONS:
                sub = lay.sublayer(loc)
                host = lay.host(layer, loc)
                if sub.style == "output" and not all(hasattr(host, a) for a in ("dense", "LayerNorm", "dropout")):
                    raise TypeError(f"layer {i}: '{sub.host}' lacks dense / LayerNorm / dropout")
                lay.norm_of(layer, loc)
    except (AttributeError, IndexError) as e:
        raise TypeError(f"{type(encoder).__name__} does not have the module structure its layout "
                        f"'{lay.family}' declares ({e})") from None
    return lay
