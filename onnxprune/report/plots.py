"""The reports' figures as PNG bytes (matplotlib, Agg backend), shared by ``prune --report x.html`` and ``sweep``.

Without matplotlib (the ``plot`` extra) every function returns None and the
reports keep their tables, which carry every figure's numbers, and say so.
Layer names are long and many (ResNet-56: 56 prunable convs), so per-layer
figures are horizontal bars, one row per channel group (its layers shrink
together), with readable names.
"""

from __future__ import annotations

import io
import logging
from typing import Optional, Sequence

from .document import Figure

logger = logging.getLogger(__name__)

NO_PLOTS = "matplotlib is not installed, so this report has tables only (pip install \"onnxprune[plot]\" for the plots)"


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return buf.getvalue()


def _short(name: str, width: int = 38) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def widths_figure(rows: Sequence[tuple[str, int]], series: Sequence[tuple[str, Sequence[int]]], caption: str,
                  name: str = "widths.png", legend_title: Optional[str] = None) -> Optional[Figure]:
    """Kept kernels per row (a channel group or a layer): the dense width as a grey bar, each series on top.

    ``rows``: (label, dense width); ``series``: (legend label, kept width per row), most kept first.
    """
    plt = pyplot()
    if plt is None or not rows:
        return None
    n = len(rows)
    fig, ax = plt.subplots(figsize=(9, max(2.5, (0.3 if len(series) < 4 else 0.45) * n + 1.2)))
    ys = list(range(n))[::-1]
    ax.barh(ys, [d for _, d in rows], height=0.8, color="#dddddd", label="dense")
    if len(series) == 1:
        ax.barh(ys, list(series[0][1]), height=0.5, color="#4c72b0", label=series[0][0])
    k = len(series)
    for i, (label, kept) in enumerate(series if k > 1 else []):  # one marker per budget, each on its own line
        offs = [y + 0.3 - 0.6 * i / (k - 1) for y in ys]  # of the row, so equal widths do not hide each other
        ax.plot(list(kept), offs, linestyle="none", marker="os^Dv<>ph*"[i % 10], markersize=6, label=label)
    ax.set_yticks(ys)
    ax.set_yticklabels([_short(lbl) for lbl, _ in rows], fontsize=8)
    ax.set_xlabel("kernels (output channels)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), title=legend_title, title_fontsize=8)
    ax.set_ylim(-0.6, n - 0.4)
    return Figure(_png(fig), caption, name)


def _bar_rows(plt, n: int):
    """A figure tall enough for ``n`` horizontal bars, and their y positions (the first row on top)."""
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.3 * n + 1.2)))
    return fig, ax, list(range(n))[::-1]


def _label_rows(ax, ys: list[int], labels: Sequence[str], xlabel: str) -> None:
    ax.set_yticks(ys)
    ax.set_yticklabels([_short(lbl) for lbl in labels], fontsize=8)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.set_ylim(-0.6, len(ys) - 0.4)


def bars_figure(rows: Sequence[tuple[str, float]], xlabel: str, caption: str, name: str,
                values: Optional[Sequence[str]] = None, faint: Sequence[bool] = (),
                reference: Optional[tuple[float, str]] = None) -> Optional[Figure]:
    """One horizontal bar per row (a channel group's sensitivity, shown once for the group).

    ``values``: a label at the end of each bar; ``faint``: rows drawn hatched and pale (a figure inside the noise);
    ``reference``: a dashed line at (x, its legend), e.g. the dense model's 100%.
    """
    plt = pyplot()
    if plt is None or not rows:
        return None
    n = len(rows)
    fig, ax, ys = _bar_rows(plt, n)
    pale = [bool(faint[i]) if i < len(faint) else False for i in range(n)]
    bars = ax.barh(ys, [v for _, v in rows], height=0.7, color=["#b8c6e0" if p else "#4c72b0" for p in pale])
    for bar, p in zip(bars, pale):
        if p:
            bar.set_hatch("//")
    for y, (_, v), label in zip(ys, rows, values or []):
        ax.annotate(label, (v, y), textcoords="offset points", xytext=(4, -3), fontsize=8)
    if reference is not None:
        ax.axvline(reference[0], color="#555555", linestyle="--", linewidth=1, label=reference[1])
        ax.legend(fontsize=8, loc="lower right")
    if values:
        ax.set_xlim(0, max([v for _, v in rows] + [reference[0] if reference else 0]) * 1.25 or 1)
    _label_rows(ax, ys, [lbl for lbl, _ in rows], xlabel)
    return Figure(_png(fig), caption, name)


def importance_figure(rows: Sequence[tuple[str, float, float]], xlabel: str, caption: str,
                      name: str) -> Optional[Figure]:
    """One stacked bar per channel group: (label, kept part, removed part) of its summed scores."""
    plt = pyplot()
    if plt is None or not rows:
        return None
    fig, ax, ys = _bar_rows(plt, len(rows))
    kept = [k for _, k, _ in rows]
    ax.barh(ys, kept, height=0.7, color="#4c72b0", label="kept")
    ax.barh(ys, [r for _, _, r in rows], left=kept, height=0.7, color="#dd8452", label="removed")
    for y, (_, k, r) in zip(ys, rows):
        if k + r > 0 and r > 0:
            ax.annotate(f"{r / (k + r):.0%}", (k + r, y), textcoords="offset points", xytext=(4, -3), fontsize=8)
    ax.set_xlim(0, max(k + r for _, k, r in rows) * 1.15 or 1)
    ax.legend(fontsize=8, loc="lower right")
    _label_rows(ax, ys, [lbl for lbl, _, _ in rows], xlabel)
    return Figure(_png(fig), caption, name)


def tradeoff_figure(points: Sequence[tuple[float, float, str]], dense: tuple[float, float], xlabel: str,
                    ylabel: str, caption: str, name: str,
                    xerr: Optional[Sequence[tuple[float, float]]] = None,
                    floor: Optional[float] = None) -> Optional[Figure]:
    """Quality against cost (MACs kept, latency): each pruned model a labelled point, the dense one a star."""
    plt = pyplot()
    if plt is None or not points:
        return None
    pts = sorted(zip(points, xerr or [None] * len(points)), key=lambda t: t[0][0])
    xs, ys = [p[0] for p, _ in pts], [p[1] for p, _ in pts]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if xerr:
        ax.errorbar(xs, ys, xerr=[[e[0] for _, e in pts], [e[1] for _, e in pts]], fmt="o", capsize=3,
                    label="pruned")  # no line: measured latency need not fall with the budget
    else:
        ax.plot(xs, ys, "o-", label="pruned")
    ax.plot([dense[0]], [dense[1]], "k*", markersize=12, label="dense")
    if floor is not None:
        ax.axhline(floor, color="#c44e52", linestyle="--", linewidth=1, label="floor")
    for (x, y, label), _ in (p for p in pts if p[0][2]):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return Figure(_png(fig), caption, name)
