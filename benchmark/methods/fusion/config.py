"""The ``fusion:`` section (AdapterFusion, static mixing, weight merging), the two fusion kinds with their Table 2
comparisons, and what a fusion layer costs per token (layer 0: no torch). The section is one of the paper's: it
dumps as null while unset (``late=False``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from benchmark.methods import Column, Comparison, MethodKind, register
from benchmark.methods.merge_defaults import MERGE_DEFAULTS, MergeHow
from benchmark.methods.params import ReductionFactor, Strict
from benchmark.methods.registry import section


class PruneParams(Strict):
    """Pruned fusion (AdapterDrop, Rueckle et al. 2021): after training, the same ``keep`` adapters in every layer,
    those with the highest mean fusion attention over all layers and held-out rows; the softmax renormalised
    over them."""

    keep: int = Field(ge=1, description="adapters kept (at most the number fused)")



class MergeParams(Strict):
    """Weight merging of the N source adapters into one (``fusion.mixing: merge``; ``modeling/merging.py``):
    task vectors taken from the stage-1 init of the sources' seed, merged by ``how``, the merged adapter put where
    the target's single adapter sits; the head trains over it (frozen, or trained too with ``train_adapter``)."""

    how: MergeHow = Field(description="average (AdapterSoup: the mean of the weights), task_arithmetic (init + "
                          "lambda sum of task vectors), ties (trim to the top density, elect signs, disjoint mean), "
                          "dare (random drop to density, rescaled, then task arithmetic) or dare_ties; over LoRA "
                          "sources (fusion.source_method) these are PEFT's add_weighted_adapter types on the A and B "
                          "factors (linear, ties, dare_linear, dare_ties), and svd, PEFT's delta-wise type (the mean "
                          "of the B A deltas, truncated to the sources' rank), is LoRA's only")
    density: float | None = Field(None, gt=0, le=1, description="share of each task vector kept: TIES' top-k "
                                  "(default 0.2), DARE's 1 - p (default 0.1); ties, dare and dare_ties only")
    weight: float | None = Field(None, gt=0, description="lambda, the scale of the merged task vector (default: "
                                 "0.4 for task_arithmetic, 1 for ties, dare and dare_ties); not for average")
    train_adapter: bool = Field(False, description="false: only the head trains over the frozen merged adapter; "
                                "true: the merged adapter trains with the head")

    @model_validator(mode="after")
    def _published_defaults(self) -> MergeParams:
        lam, density = MERGE_DEFAULTS[self.how]
        for field, default in (("density", density), ("weight", lam)):
            if default is None and getattr(self, field) is not None:
                raise ValueError(
                    f"fusion.merge.{field} means nothing for how: {self.how} (average takes the plain mean of the "
                    f"weights, svd the mean of the LoRA deltas; task_arithmetic keeps every entry of the task "
                    f"vectors); remove '{field}' from the "
                    f"method YAML, or choose a merge that has it (ties, dare, dare_ties{', task_arithmetic' if field == 'weight' else ''})")
            if default is not None and getattr(self, field) is None:
                setattr(self, field, default)  # the published value, written out in every dump and run id
        return self


class LoraHubParams(Strict):
    """LoraHub-style search (Huang et al. 2023; ``fusion.mixing: lorahub``, ``modeling/lorahub.py``): one weight per
    LoRA source, A = sum w_i A_i and B = sum w_i B_i, found by nevergrad's NGOpt in [-1.5, 1.5]^K from w = 0
    minimising the few-shot loss + 0.05 mean |w| (LoraHub's optimiser, box, start, budget and l1 coefficient; its
    loss is the batch loss divided by the number of examples, ours the mean, so l1 weighs relatively less here). A
    classifier needs a head to score a weighting: a search head, fitted and scored two-fold on the shots (fitted on
    one half, scored on the other, both ways round), is dropped after the search; the run then trains its own head
    over the frozen composed LoRA on the whole train split, as the merges do."""

    shots: int = Field(32, ge=2, le=10_000, description="rows of the target's train split the weights are searched "
                       "on (drawn with the run seed); LoraHub uses 5 with a language model's own head, a new "
                       "classification head scored two-fold needs more")
    budget: int = Field(40, ge=1, le=100, description="loss evaluations of the search (LoraHub's 40; at most 100: "
                        "nevergrad 1.0.12 under numpy >= 2.4 can hang with larger budgets, modeling/lorahub.py)")
    l1: float = Field(0.05, ge=0, description="weight of mean |w| added to the loss (LoraHub's 0.05)")
    head_steps: int = Field(100, ge=1, le=10_000, description="full-batch Adam steps (at the method's lr) of the "
                            "search head on each half of the shots, for every weighting scored")


class FusionParams(Strict):
    type: Literal["dynamic", "static"] = Field(
        "dynamic", description="AdapterFusion with Value (dynamic) or without (static, AdapterHub's name); "
        "static mixing is 'mixing: static', not this")
    regularization: float = Field(0.01, ge=0, description="weight of sum_l ||I - V_l||_F^2 (dynamic only)")
    temperature: bool = Field(False, description="anneal the softmax temperature from 50 to 1 over training")
    source_reduction_factor: ReductionFactor = Field(16, description="reduction factor of the fused ST-A adapters")
    source_method: str | None = Field(
        None, description="the method spec the stage-1 sources are runs of: None is ST-A (st_a at "
        "source_reduction_factor); a LoRA spec (e.g. lora) gives LoRA sources, which only mixing: merge composes "
        "(AdapterFusion and static mixing fuse bottleneck adapters)")
    implementation: Literal["fast", "naive"] = "fast"
    prune: PruneParams | None = Field(
        None, description="after training, keep the top-k adapters by mean attention (benchmark/modeling/prune.py)")
    mixing: Literal["attention", "static", "merge", "lorahub"] = Field(
        "attention", description="how the N adapter outputs are weighted per layer: 'attention' is AdapterFusion "
        "(Query/Key per token, benchmark/modeling/fusion.py); 'static' is static mixing, one learned softmax over "
        "the N adapters per layer, the same for every token (no Query, Key or Value: benchmark/modeling/mixing.py), "
        "the ablation of fusion's attention. Not the same thing as 'type: static' (AdapterFusion without Value). "
        "Static mixing has no V, so 'type' and 'regularization' do not apply to it; 'temperature' anneals its softmax. "
        "'merge' merges the N adapters' weights into one adapter (fusion.merge; benchmark/modeling/merging.py): no "
        "fusion layer at all, the head trains over the merged adapter; 'lorahub' (LoRA sources only) composes the "
        "sources' LoRAs with weights searched without gradients on a few target rows (fusion.lorahub)")
    merge: MergeParams | None = Field(
        None, description="mixing: merge only: how the source adapters' weights are merged (MergeParams)")
    lorahub: LoraHubParams | None = Field(
        None, description="mixing: lorahub only (LoRA sources): the few-shot search of the mixing weights")

    @property
    def source_rf(self) -> int | None:
        """The reduction factor a run label carries (``_rf16``): the ST-A sources', none for other sources."""
        return self.source_reduction_factor if self.source_method is None else None

    @model_validator(mode="after")
    def _static_mixing(self) -> FusionParams:
        for field, what in (("lorahub", "search"), ("merge", "weight merge")):
            if getattr(self, field) is not None and self.mixing != field:
                raise ValueError(f"fusion.{field} is the {what} of fusion.mixing: {field}, but this method has "
                                 f"mixing: {self.mixing}; set 'mixing: {field}' in the method YAML's fusion section, "
                                 f"or remove '{field}'")
        if self.mixing == "lorahub":
            if self.lorahub is None:
                self.lorahub = LoraHubParams()  # LoraHub's defaults, written out in every dump and run id
            return self._no_fusion_layer("lorahub", "LoraHub composes one LoRA")
        if self.mixing == "merge":
            if self.merge is None:
                raise ValueError(
                    "fusion.mixing: merge needs a 'merge' section saying how the adapters are merged; add e.g. "
                    "'merge: {how: ties}' to the method YAML's fusion section (how: average, task_arithmetic, ties, "
                    "dare, dare_ties; density and weight default to the published values)")
            return self._no_fusion_layer("merge", "a merge leaves one adapter")
        if self.mixing != "static":
            return self
        if self.prune is not None:
            raise ValueError(
                "fusion.mixing: static cannot be combined with fusion.prune: pruning ranks adapters by per-token "
                "attention and reruns the same layer over fewer adapters, while a static mixing layer holds one "
                "logit per adapter it was built over (its checkpoint could not be reloaded pruned); remove "
                "'prune' from the method YAML, or use mixing: attention (the default) to prune AdapterFusion")
        if self.implementation != "fast":
            raise ValueError(
                f"fusion.mixing: static has one implementation (benchmark/modeling/mixing.py), so "
                f"fusion.implementation: {self.implementation} means nothing for it; remove 'implementation' "
                f"from the method YAML (or set it to fast, the default) or use mixing: attention")
        return self

    def _no_fusion_layer(self, mixing: str, what: str) -> FusionParams:
        for field, bad, why in (
                ("prune", self.prune is not None, f"{what} and no attention to rank adapters by"),
                ("implementation", self.implementation != "fast", f"{what}: no fusion layer to implement"),
                ("temperature", self.temperature, f"{what}: no softmax to anneal")):
            if bad:
                raise ValueError(f"fusion.mixing: {mixing} cannot be combined with fusion.{field}: {why}; remove "
                                 f"'{field}' from the method YAML (or set it to its default), or use mixing: attention")
        return self



def flops(p: FusionParams, shape, sources: int) -> float:
    """N source adapters, then Q, K, V once over the hidden state (6H²: the estimate's simplification, which
    its calibration was fitted on) and the scores and context over N (4NH). Static mixing (``mixing: static``):
    the N adapters and the weighted sum of their outputs (2NH); no Q, K, V, no scores."""
    H, n = shape.hidden, max(1, sources)
    one = 2 * 2 * H * (H // max(1, p.source_reduction_factor))
    if p.mixing in ("merge", "lorahub"):  # the N sources made one module before training: one module's work
        return one
    adapters = n * one
    if p.mixing == "static":
        return adapters + 2 * n * H
    return adapters + 2 * 3 * H * H + 4 * n * H


section("fusion", FusionParams, flops, late=False)

register(MethodKind(
    "fusion_st_a", frozenset({"head", "fusion"}), needs=("fusion",), depends_on="stage1",
    label_rf="fusion.source_rf",
    columns={"table1": (Column("fusion_st_a_rf16", "fusion_st_a", "F. w/ ST-A", "Fusion w/ ST-A"),),
             "table4": (Column("fusion_st_a_rf16", "fusion_st_a_rf16", "F. w/ ST-A", "Fusion w/ ST-A"),)},
    comparisons=(Comparison("fusion_st_a_vs_st_a", "fusion_st_a_rf16", "st_a_rf16", "F. w/ ST-A vs ST-A", True,
                            rank_correlation=True),
                 Comparison("fusion_st_a_vs_mt_a", "fusion_st_a_rf16", "mt_a_rf16", "F. w/ ST-A vs MT-A"),
                 Comparison("fusion_st_a_vs_full", "fusion_st_a_rf16", "full", "F. w/ ST-A vs Full"))))
register(MethodKind(
    "fusion_mt_a", frozenset({"head", "fusion"}), needs=("fusion",), depends_on="mt_a",
    columns={"table1": (Column("fusion_mt_a", "fusion_mt_a", "F. w/ MT-A", "Fusion w/ MT-A"),)},
    comparisons=(Comparison("fusion_mt_a_vs_st_a", "fusion_mt_a", "st_a_rf16", "F. w/ MT-A vs ST-A"),
                 Comparison("fusion_mt_a_vs_mt_a", "fusion_mt_a", "mt_a_rf16", "F. w/ MT-A vs MT-A", True),
                 Comparison("fusion_mt_a_vs_full", "fusion_mt_a", "full", "F. w/ MT-A vs Full"))))
