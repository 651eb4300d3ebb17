"""The report's "Swept methods" section: what ``afbench sweep`` (runner/sweep.py) searched for this experiment.

Each ``<results>/<experiment>/.sweep/<method>/study.db`` is Optuna's sqlite study, read here read-only with the
standard library (the reporter never imports Optuna): trials by state, the best held-out value and its values,
the searched space, and the adopted ``<method>_swept`` column when the experiment reports one.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Swept:
    method: str
    finished: int = 0
    failed: int = 0
    running: int = 0
    best: float | None = None
    params: dict = field(default_factory=dict)
    space: list[str] = field(default_factory=list)
    sampler: str = "Optuna TPE"
    column: str | None = None  # the adopted <method>_swept column of this report, if any
    problem: str | None = None  # a study that could not be read


def _study(db: Path, method: str) -> Swept:
    out = Swept(method)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        attrs = dict(con.execute("SELECT key, value_json FROM study_user_attributes").fetchall())
        out.space = json.loads(attrs.get("space", "[]"))
        out.sampler = json.loads(attrs.get("sampler", json.dumps(out.sampler)))
        cut = {t for (t,) in con.execute("SELECT trial_id FROM trial_user_attributes WHERE key = 'interrupted'")}
        for tid, state in con.execute("SELECT trial_id, state FROM trials"):
            if tid in cut:
                continue  # a trial a kill interrupted: its values were asked again
            out.finished += state == "COMPLETE"
            out.failed += state == "FAIL"
            out.running += state == "RUNNING"
        best = con.execute("SELECT v.trial_id, v.value FROM trial_values v JOIN trials t ON t.trial_id = v.trial_id "
                           "WHERE t.state = 'COMPLETE' ORDER BY v.value DESC, t.number LIMIT 1").fetchone()
        if best:
            out.best = best[1]
            for name, value, dist in con.execute("SELECT param_name, param_value, distribution_json FROM "
                                                 "trial_params WHERE trial_id = ?", (best[0],)):
                out.params[name] = int(value) if "IntDistribution" in dist else float(f"{value:.4g}")
    return out


def swept_methods(reg, experiment: str, results_dir: Path) -> list[Swept]:
    """One entry per study under ``<results>/<experiment>/.sweep/``; [] when there is none."""
    exp = reg.experiments.get(experiment)
    columns = {}
    for g in exp.groups if exp else []:
        for m in g.methods:
            name = m if isinstance(m, str) else m.method
            if name.endswith("_swept") and name in reg.methods:
                columns[name] = reg.methods[name].method_kind.label(reg.methods[name])
    out = []
    for db in sorted(Path(results_dir, experiment, ".sweep").glob("*/study.db")):
        try:
            s = _study(db, db.parent.name)
        except (sqlite3.Error, json.JSONDecodeError, TypeError) as e:
            s = Swept(db.parent.name, problem=f"{db} could not be read ({e})")
        s.column = columns.get(f"{s.method}_swept")
        out.append(s)
    return out
