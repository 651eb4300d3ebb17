"""Reruns of one run id: the report's reproducibility check (benchmark/report/reruns.py)."""

from benchmark.records import RunRecord
from benchmark.report.reruns import reruns, summary


def _result(metric, losses, dev, prev=None, run_id="rte__st_a_rf16__m__s1__abc"):
    return RunRecord(run_id=run_id, experiment="e", task="rte", label="st_a_rf16", backbone="m", seed=1,
                     status="finished", best_metric=metric, wall_seconds=10.0, previous_result=prev,
                     history=[{"train_loss": x, "dev_accuracy": d} for x, d in zip(losses, dev)])


def test_an_exact_rerun_and_a_moved_one_are_told_apart():
    old = _result(60.0, [0.7, 0.6], [55.0, 60.0])
    prev = old.model_dump(include={"best_metric", "wall_seconds", "history"})
    same = _result(60.0, [0.7, 0.6], [55.0, 60.0], prev)
    moved = _result(61.5, [0.7, 0.59], [55.0, 61.5], prev, run_id="cb__st_a_rf16__m__s1__def")
    rows = reruns([same, moved, old])  # a result without previous_result is no rerun
    assert [r.run_id for r in rows] == ["cb__st_a_rf16__m__s1__def", "rte__st_a_rf16__m__s1__abc"]
    assert rows[1].same_losses and rows[1].delta == 0 and rows[1].max_epoch_delta == 0
    assert not rows[0].same_losses and rows[0].delta == 1.5 and rows[0].max_epoch_delta == 1.5
    assert rows[0].cpu_before == "not recorded"
    text = summary(rows)
    assert "2 run(s)" in text and "1 reproduced" in text and "+1.50 (cb__" in text
