"""The report's plots as PNG bytes, drawn with matplotlib's Agg canvas (no display, no pyplot state)."""
from __future__ import annotations

import io
from collections.abc import Sequence

from losh.evaluation.frame_metrics import PRECISION_THRESHOLDS


def _png(figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def precision_plot(metrics: dict, paper: dict[str, float] | None = None) -> bytes | None:
    """Bars of precision@0.5 ... @0.9 (percent); None where the evaluation has none (whole-video sets)."""
    from matplotlib.figure import Figure

    values = [metrics.get(f"precision@{k}") for k in PRECISION_THRESHOLDS]
    if any(v is None for v in values):
        return None
    figure = Figure(figsize=(5, 3.2))
    axes = figure.add_subplot()
    labels = [f"P@{k}" for k in PRECISION_THRESHOLDS]
    bars = axes.bar(labels, [100 * v for v in values], color="#3b6fb6")
    axes.bar_label(bars, fmt="%.1f", fontsize=8)
    axes.set_ylim(0, 105)
    axes.set_ylabel("% of samples with IoU above k")
    axes.set_title("precision@k")
    figure.tight_layout()
    return _png(figure)


def histogram(values: Sequence[float], label: str = "IoU") -> bytes:
    """How the per-sample `label` spreads over [0, 1] (20 bins), its mean marked."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3.2))
    axes = figure.add_subplot()
    axes.hist(list(values), bins=20, range=(0.0, 1.0), color="#3b6fb6", edgecolor="white")
    if len(values):
        mean = sum(values) / len(values)
        axes.axvline(mean, color="#c0392b", linestyle="--", label=f"mean {100 * mean:.1f}")
        axes.legend(fontsize=8)
    axes.set_xlabel(label)
    axes.set_ylabel("samples")
    axes.set_title(f"{label} per sample ({len(values)})")
    figure.tight_layout()
    return _png(figure)
