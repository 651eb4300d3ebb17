"""What a fusion run adds: the N source adapters (stage-1 ST-A runs or published adapters for Fusion w/ ST-A, the
MT-A run's adapters and encoder for Fusion w/ MT-A), frozen, and the fusion layer over them, trained with the
head; after training, its attention on dev (``fusion_attention``) and, with ``fusion.prune``, the pruned model.
``mixing: static`` swaps the layer for static mixing; ``mixing: merge`` merges the sources into one adapter
instead (no fusion layer: ``_merged_sources``)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmark import records
from benchmark.data.encode import collate
from benchmark.data.published import content_hash
from benchmark.errors import CheckpointError, SpecError
from benchmark.modeling import lorahub, merging
from benchmark.modeling.backbone import load_encoder, load_tokenizer
from benchmark.modeling.checkpoint import load_adapterhub, load_modules
from benchmark.modeling.model import AdapterModel, Fuse, Modules, flat_choices
from benchmark.modeling.prune import mean_attention, rank_adapters, top_k
from benchmark.plan.run import Run
from benchmark.training.loop import Objective, inputs_of, predict
from benchmark.training.recipe import FUSION, RunContext, Setup, Trained, load_data


def setup(model: AdapterModel, run: Run, ctx: RunContext) -> Setup:
    params = run.method.fusion
    if run.kind.depends_on == "mt_a":  # the MT-A run's adapters and its fine-tuned encoder, both frozen
        load_modules(model, ctx.run_dir(run.deps[0]), adapters=run.sources, heads=[], fusions=[], encoder=True)
    elif params.mixing == "merge":
        return _merged_sources(model, run, ctx)
    elif params.mixing == "lorahub":
        return _lorahub(model, run, ctx)
    else:
        for src, dep in run.stage1_deps():  # one stage-1 ST-A run per source ...
            load_modules(model, ctx.run_dir(dep), adapters=[src], heads=[], fusions=[], encoder=False)
        for src, pub in run.published.items():  # ... or a published AdapterHub adapter (fusion.adapterhub)
            if content_hash(Path(pub.folder)) != pub.sha256:
                raise CheckpointError(f"the published adapter for '{src}' changed since the run was planned",
                                      file=pub.folder,
                                      fix="plan again (afbench run) so the run id holds its new content")
            load_adapterhub(model, Path(pub.folder), name=src)
    # the fusion layer (or static mixing) over the loaded sources; it trains with the paper's V regulariser
    # (dynamic AdapterFusion only: static mixing has no V) and optionally the annealed temperature
    model.add_fusion(FUSION, run.sources, params)
    model.set_active(Fuse(FUSION))
    has_value = params.type == "dynamic" and params.mixing == "attention"
    return Setup(trains=Modules(fusions=[FUSION]), keeps=Modules(adapters=run.sources),
                 objective=Objective(FUSION, params.regularization if has_value else 0.0, params.temperature),
                 finish=_attention_and_pruning)


def _read_sources(run: Run, ctx: RunContext):
    """The stage-1 sources of a merge or LoraHub run, read into a scratch model of the same backbone (built without
    drawing from the run's generator): (per-module states of each source, their one params, the sources' seed,
    the scratch model)."""
    if run.published:
        raise SpecError(f"fusion.mixing: {run.method.fusion.mixing} reads stage-1 sources (and the init they started "
                        f"from), which published adapters do not have ({', '.join(run.published)} come from fusion.adapterhub)",
                        file=ctx.reg.file_of("experiment", run.experiment) or run.experiment, field="fusion.adapterhub",
                        fix="merge stage-1 sources only: leave fusion.adapterhub out of the experiment for this method")
    # the sources' seeds (None: a source without result.json)
    seeds = {getattr(records.read_result(Path(ctx.run_dir(dep))), "seed", None) for _, dep in run.stage1_deps()}
    if len(seeds) != 1 or None in seeds:
        raise CheckpointError(f"the merged sources must be stage-1 runs of one seed with a result.json each; "
                              f"found seeds {sorted(map(str, seeds))}", file=str(ctx.run_dir(run.deps[0])),
                              fix="rerun the stage-1 dependencies (afbench run) so each has its result")
    source_seed = seeds.pop()
    bspec = ctx.reg.backbones[run.backbone]
    with torch.random.fork_rng(devices=[]):  # building the scratch backbone draws nothing from the run's generator
        scratch = AdapterModel(load_encoder(bspec, load_tokenizer(bspec)))
    sources = []
    for src, dep in run.stage1_deps():
        load_modules(scratch, ctx.run_dir(dep), adapters=[src], heads=[], fusions=[], encoder=False)
        sources.append(merging.read(scratch, src))
    params = scratch.adapter_params[run.sources[0]]
    if any(scratch.adapter_params[s] != params for s in run.sources):
        raise CheckpointError("the merged sources are adapters of different configurations "
                              f"({sorted({str(scratch.adapter_params[s]) for s in run.sources})})",
                              file=str(ctx.run_dir(run.deps[0])), fix="merge stage-1 runs of one method spec")
    return sources, params, source_seed, scratch


def _merged_sources(model: AdapterModel, run: Run, ctx: RunContext) -> Setup:
    """``fusion.mixing: merge``: the same stage-1 ST-A sources Fusion w/ ST-A reads, merged into ONE adapter
    (``modeling/merging.py``) put where the target's own adapter sits (named after the task, so the run folder
    is an ST-A run's: one adapter and the head). The task vectors are taken from the init every source started
    from: the stage-1 runs of one seed share it (their recipe seeds just before adding the adapter), re-created
    by ``merging.initial_adapter`` for the sources' seed. LoRA sources (``fusion.source_method``) are merged as
    PEFT merges them, on the factors (``merging.merge_loras``). DARE's drop is seeded from the run seed. The sources
    are read in a scratch model of the same backbone, and the global generator is left as it was, so the head
    is initialised as in any run of this seed."""
    spec, task = run.method.fusion.merge, run.task
    sources, params, source_seed, scratch = _read_sources(run, ctx)
    drops = torch.Generator().manual_seed(run.seed)
    extra = {}
    if params.type == "lora":  # PEFT's add_weighted_adapter: the factors themselves, no init subtracted
        base = None
        merged, rank = merging.merge_loras(sources, spec.how, scalings=[params.alpha / params.rank] * len(sources),
                                           lam=spec.weight, density=spec.density, generator=drops)
        params = params.model_copy(update={"rank": rank, "alpha": float(rank)})  # PEFT's merged LoRA: alpha = r
        extra = {"combination": merging.LORA_MERGES[spec.how], "rank": rank}
    else:
        base = None if spec.how == "average" else merging.initial_adapter(scratch, params, source_seed)
        merged = merging.merge_adapters(sources, spec.how, base=base, lam=spec.weight, density=spec.density,
                                        generator=drops)
    del scratch
    model.add_adapter(task, params)
    merging.write(model, task, merged)
    model.set_active(task)
    mine = Modules(adapters=[task])
    info = {"how": spec.how, "density": spec.density, "weight": spec.weight, "sources": list(run.sources),
            "source_seed": source_seed, "base": "none" if base is None else "init", "train_adapter": spec.train_adapter,
            **extra}
    if spec.train_adapter:
        return Setup(trains=mine, record={"merge": info})
    return Setup(keeps=mine, record={"merge": info})


def _lorahub(model: AdapterModel, run: Run, ctx: RunContext) -> Setup:
    """``fusion.mixing: lorahub`` (LoRA sources): one weight per source LoRA found without gradients on ``shots``
    rows of the target's train split (drawn with the run seed; ``modeling/lorahub.py``), the composed LoRA
    (A = sum w_i A_i, B = sum w_i B_i, the sources' rank and alpha) frozen under the run's head. A weighting is
    scored by the two-fold cross-validated cross-entropy of a search head over the encoder it gives
    (``_probe_loss``), so a head that memorises the shots gains nothing; the search head is dropped afterwards.
    Everything the search draws is under a forked generator; the model is in eval mode (no dropout) while
    searching, on the CPU in float32, before the run's device and precision are applied."""
    hub, task = run.method.fusion.lorahub, run.task
    sources, params, source_seed, scratch = _read_sources(run, ctx)
    del scratch
    t0 = time.perf_counter()
    model.add_adapter(task, params)  # the composed LoRA's slot, drawn as a merge's is
    model.set_active(task)
    spec, bspec = ctx.reg.tasks[task], ctx.reg.backbones[run.backbone]
    tok = load_tokenizer(bspec)
    train = load_data(ctx, run, spec, tok)[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)
        rows = torch.randperm(len(train.examples))[:hub.shots].tolist()
        batch = collate([train.examples[i] for i in rows], tok.pad_token_id)  # the few-shot rows, one batch
        model.add_head(SEARCH_HEAD, spec.type, spec.num_labels, bspec.pooling)
        start = {k: v.clone() for k, v in model.heads[SEARCH_HEAD].state_dict().items()}
        model.eval()

        def loss(states) -> float:
            merging.write(model, task, states)
            return _probe_loss(model, batch, start, hub.head_steps, run.method.train.lr)

        at_zero = loss(lorahub.compose(sources, [0.0] * len(sources)))  # the encoder as it is: w = 0
        found = lorahub.search(sources, loss, budget=hub.budget, l1=hub.l1, seed=run.seed)
    merging.write(model, task, lorahub.compose(sources, found.weights))
    del model.heads[SEARCH_HEAD], model.head_specs[SEARCH_HEAD]
    model.train()
    info = {"weights": dict(zip(run.sources, found.weights)), "objective": found.objective,
            "objective_at_zero": at_zero, "shots": len(rows), "evaluations": len(found.history),
            "budget": hub.budget, "source_seed": source_seed, "search_seconds": time.perf_counter() - t0}
    return Setup(keeps=Modules(adapters=[task]), record={"lorahub": info})


SEARCH_HEAD = "_lorahub_search"  # the head LoraHub's search scores weightings with; never saved


def _probe_loss(model: AdapterModel, batch: dict, start: dict, steps: int, lr: float) -> float:
    """Two-fold cross-validated cross-entropy of the search head over what the encoder now computes: the few-shot
    rows split in two halves (even and odd positions of the drawn order), the head reset to ``start``, fitted by
    ``steps`` full-batch Adam steps on one half and scored on the other, both ways round; the mean of the two.
    The hidden states are computed once per weighting (nothing below the head changes while it is fitted)."""
    head = model.heads[SEARCH_HEAD]
    inputs = inputs_of(batch)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]  # [B, L] or [B, K, L]
    k = ids.shape[1] if ids.dim() == 3 else None
    with torch.no_grad():
        hidden = model.encode(*flat_choices(k, ids, mask, inputs.get("token_type_ids")))
    hidden = hidden.unflatten(0, (ids.shape[0], k)) if k else hidden  # [B, (K,) L, H]
    labels, n = batch["labels"], ids.shape[0]

    def logits(rows):  # the head on these examples: [len(rows), C] (multiple choice: [len(rows), K])
        return head(*flat_choices(k, hidden[rows], mask[rows]), k)

    halves = [torch.arange(0, n, 2), torch.arange(1, n, 2)]
    scores = []
    for fit, held in (halves, halves[::-1]):
        head.load_state_dict(start)
        opt = torch.optim.Adam(head.parameters(), lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(logits(fit), labels[fit]).backward()
            opt.step()
        with torch.no_grad():
            scores.append(F.cross_entropy(logits(held), labels[held]).item())
    return sum(scores) / 2


def _attention_and_pruning(done: Trained) -> None:
    """The mean fusion attention (or static mixing weight) per layer and source on dev, and ``fusion.prune``."""
    model, run, method = done.model, done.run, done.run.method
    bs, pad_id, device, compute = method.train.eval_batch_size, done.pad_id, done.ctx.device, done.compute
    model.start_capture()
    again = predict(model, done.dev, run.task, pad_id, bs, device, compute).accuracy
    done.result["fusion_attention"] = {"adapters": list(run.sources), "layers": model.stop_capture(),
                                       "dev_accuracy": again}
    if method.fusion.mixing != "attention":  # static mixing: the same weights at every token, recorded alike
        done.result["fusion_attention"]["mixing"] = method.fusion.mixing
    if method.fusion.prune is None:
        return
    # ``fusion.prune: {keep: k}``: rank the fused adapters by mean attention over every layer and the ranking rows
    # (the held-out slice; train rows under ``selection: dev``, never dev), keep the top k in every layer
    # (``modeling/prune.py``) and evaluate the pruned model on dev (its predictions too)
    keep = method.fusion.prune.keep
    ranking, ranked_on = (done.heldout, "heldout") if done.heldout is not None else (done.train, "train")
    model.start_capture()
    predict(model, ranking, run.task, pad_id, bs, device, compute)
    layers = model.stop_capture()
    names = list(model.fusion_params[FUSION][0])
    kept = model.prune_fusion(FUSION, top_k(names, layers, keep), drop_adapters=True)
    pred = predict(model, done.dev, run.task, pad_id, bs, device, compute)
    done.result["prune"] = {"keep": keep, "kept": kept, "ranking": rank_adapters(names, layers), "ranked_on": ranked_on,
                            "ranking_rows": len(ranking), "mean_attention": dict(zip(names, mean_attention(layers))),
                            "dev_accuracy": pred.accuracy, "unpruned_dev_accuracy": done.best_metric}
    done.predictions = pred
    done.result["best_metric"] = done.result["prune"]["dev_accuracy"]  # the pruned model is what it reports
    done.keeps = Modules(adapters=kept)
