"""``afbench perf --mode ...``: which module measures what."""

from __future__ import annotations


def run_perf(args) -> int:
    mode = getattr(args, "mode", "steps")
    if mode == "epochs":
        from benchmark.perf.epochs import run_epochs

        return run_epochs(args)
    if mode == "roofline":
        from benchmark.perf.roofline import run_roofline

        return run_roofline(args)
    if mode == "inference":
        from benchmark.perf.inference import run_inference

        return run_inference(args)
    from benchmark.perf.training_steps import run_steps

    return run_steps(args)
