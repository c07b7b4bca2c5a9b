"""Pictures the jobs log to MLflow (matplotlib, no display): training curves, identities per series."""

from __future__ import annotations

import io as _io
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _png(fig: Figure) -> bytes:
    fig.tight_layout()
    out = _io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def curves_png(panels: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], title: str) -> bytes:
    """One subplot per panel (e.g. "loss", "validation"), one line per metric: ``{panel: {metric: [(epoch,
    value), ...]}}``. Panels without any point are left out."""
    panels = {name: {k: v for k, v in lines.items() if v} for name, lines in panels.items()}
    panels = {name: lines for name, lines in panels.items() if lines}
    fig = Figure(figsize=(6 * max(1, len(panels)), 4), dpi=100)
    FigureCanvasAgg(fig)
    for i, (name, lines) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for metric, points in sorted(lines.items()):
            steps, values = zip(*sorted(points), strict=True)
            ax.plot(steps, values, marker="o", markersize=3, label=metric)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _png(fig)


def identities_png(series: Sequence[Mapping[str, float]], title: str) -> bytes:
    """Predicted vs ground-truth identities per series (rows with ``series``, ``identities`` and
    ``true_identities``, as in the label job's ``quality.json``)."""
    fig = Figure(figsize=(max(5.0, 0.6 * len(series) + 2), 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    names = [str(int(s["series"])) for s in series]
    x = range(len(series))
    ax.bar([i - 0.2 for i in x], [s["true_identities"] for s in series], width=0.4, label="ground truth")
    ax.bar([i + 0.2 for i in x], [s["identities"] for s in series], width=0.4, label="found")
    ax.set_xticks(list(x), names, rotation=45 if len(names) > 8 else 0)
    ax.set_xlabel("series")
    ax.set_ylabel("identities")
    ax.set_title(title)
    ax.legend()
    return _png(fig)
