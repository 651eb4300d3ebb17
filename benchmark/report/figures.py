"""Figures (matplotlib, PNG): Figure 3 style relative differences to Full, Figure 4/6 style
fusion-attention heatmaps (rows: target task, columns: adapters, one panel per layer)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmark.report.aggregate import Collected  # noqa: E402
from benchmark.report.tables import task_order  # noqa: E402

PNG_META = {"Software": None}  # no version stamp: the same data gives the same bytes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata=PNG_META)
    plt.close(fig)
    return buf.getvalue()


def attention_matrix(col: Collected, backbone: str, label: str, reg):
    """-> (targets, adapters, array [layers, targets, adapters]) averaged over seeds, or None."""
    per_target = {t: v for (b, t, c), v in col.attention.items() if b == backbone and c == label}
    if not per_target:
        return None
    targets = task_order(reg, list(per_target))
    adapters = list(dict.fromkeys(a for t in targets for rec in per_target[t] for a in rec["adapters"]))
    layers = len(per_target[targets[0]][0]["layers"])
    m = np.full((layers, len(targets), len(adapters)), np.nan)
    for i, t in enumerate(targets):
        recs = per_target[t]
        acc = np.zeros((layers, len(adapters)))
        for rec in recs:
            idx = [adapters.index(a) for a in rec["adapters"]]
            acc[:, idx] += np.asarray(rec["layers"])
        m[:, i, :] = acc / len(recs)
    return targets, adapters, m


def heatmap(col: Collected, backbone: str, label: str, reg, name: str | None = None) -> bytes | None:
    fig = heatmap_figure(col, backbone, label, reg, name)
    return None if fig is None else _png(fig)


def heatmap_figure(col: Collected, backbone: str, label: str, reg, name: str | None = None):
    """Figure 4/6 style: one panel per layer, rows = target task, columns = adapter, cells in %; the title
    names the method as ``name`` (e.g. "Fusion w/ ST-A"), else by its run label."""
    got = attention_matrix(col, backbone, label, reg)
    if got is None:
        return None
    targets, adapters, m = got
    pct = 100.0 * m  # [layers, targets, adapters]: the cells, the colour bar and the title all in %
    layers = pct.shape[0]
    ncols = min(layers, 4)
    nrows = (layers + ncols - 1) // ncols
    label_room = 0.09 * max(len(a) for a in adapters)  # inches of rotated x labels under each row
    # constrained layout keeps the figure title, the panel titles, the tick labels and the colour bar
    # apart for any number of layers (a fixed suptitle overlapped the panel titles with 2 layers)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                             figsize=(3.1 * ncols + 0.8, (0.38 * len(targets) + 0.9 + label_room) * nrows + 0.4))
    vmax = float(np.nanmax(pct))
    for k in range(nrows * ncols):
        ax = axes[k // ncols][k % ncols]
        if k >= layers:
            ax.axis("off")
            continue
        im = ax.imshow(pct[k], vmin=0.0, vmax=vmax, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(pct[k]):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8,  # legible at a 1,200 px page
                    color="white" if v < 0.6 * vmax else "black")
        ax.set_title(f"layer {k + 1}", fontsize=9)
        ax.set_xticks(range(len(adapters)), adapters, rotation=90, fontsize=7)
        ax.set_yticks(range(len(targets)), targets if k % ncols == 0 else [""] * len(targets), fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.8, label="mean fusion attention (%)")
    fig.suptitle(f"{name or label} attention on {backbone} (% of the softmax mass)", fontsize=9)
    return fig


def relative_to_full(col: Collected, backbone: str, full: str, labels: list[tuple[str, str]], reg) -> bytes | None:
    """Figure 3 style: (method - Full) / Full in % per task; ``full``: the Full column's label (the registry's
    ``methods.FULL`` kind)."""
    if full not in col.columns(backbone):
        return None
    tasks = task_order(reg, [t for t in col.tasks(backbone) if col.cells.get((backbone, t, full))
                             and col.cells[(backbone, t, full)].values])
    methods = [(lab, name) for lab, name in labels if lab != full and lab in col.columns(backbone)]
    if not tasks or not methods:
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(tasks) * len(methods) / 2), 3.2))
    width = 0.8 / len(methods)
    for j, (lab, name) in enumerate(methods):
        vals = []
        for t in tasks:
            c, f = col.cells.get((backbone, t, lab)), col.cells[(backbone, t, full)]
            vals.append(100.0 * (c.mean - f.mean) / f.mean if c and c.values else np.nan)
        ax.bar(np.arange(len(tasks)) + j * width, vals, width, label=name)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=45, fontsize=8)
    ax.set_ylabel("relative difference to Full (%)")
    ax.legend(fontsize=7, ncols=2)
    return _png(fig)
