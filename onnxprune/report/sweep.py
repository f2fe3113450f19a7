"""The sweep report: one document written as sweep.md (with the PNGs beside it), sweep.html and sweep.json.

One speed-up column: the dense median over the pruned median of rounds
timed interleaved, marked when the two ranges of rounds overlap (then the
difference is inside the timing noise and the figure says nothing). Plots:
quality against MACs kept and against measured latency, kept widths per
channel group at each budget, and each group's summed scores once (its
channels are removed together across all its layers). The results
(:class:`SweepResult`) are defined here, as the report's input, so
``sweep`` imports its report and never the reverse.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ..graph.io import write_text_atomic
from ..latency.timing import Timing
from .document import Document, Figure, Heading, Items, Para, Table, html_page, markdown, table
from .groups import plus_layers
from .prune import INSIDE_NOISE
from .provenance import Provenance

logger = logging.getLogger(__name__)


@dataclass
class SweepPoint:
    """One pruned model of the sweep."""

    budget: float
    macs_kept: float
    params_kept: float
    latency: Timing
    quality: float
    widths: dict[str, int]
    path: Optional[str] = None
    fidelity: dict = field(default_factory=dict)


@dataclass
class SweepResult:
    """Everything the sweep report shows."""

    model: str
    kind: str
    criterion: str
    dense_latency: Timing
    dense_quality: float
    quality_name: str
    eval_description: str
    latency_where: str
    points: list[SweepPoint]
    layers: list[tuple[str, int]]
    sensitivity: dict[str, float]  # channel group, named by its first layer -> summed scores of its channels
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)  # the PNGs written beside the report (none without matplotlib)
    groups: dict[str, int] = field(default_factory=dict)  # layer -> channel group
    provenance: Optional[Provenance] = None


def speedup(dense: Timing, t: Timing) -> str:
    """'1.42x', with the noise verdict when the ranges of rounds overlap."""
    text = f"{dense.median / max(t.median, 1e-12):.2f}x"
    return text if t.high < dense.low or t.low > dense.high else f"{text} ({INSIDE_NOISE})"


def summary_table(r: SweepResult) -> Table:
    d = r.dense_latency
    rows = [["budget", "MACs kept", "params kept", "latency (ms, median, range)", "speed-up", r.quality_name],
            ["dense", "100.0%", "100.0%", f"{d.median:.3f} ({d.low:.3f}-{d.high:.3f})", "1.00x",
             f"{r.dense_quality:.2%}"]]
    for p in r.points:
        t = p.latency
        rows.append([f"{p.budget:g}", f"{p.macs_kept:.1%}", f"{p.params_kept:.1%}",
                     f"{t.median:.3f} ({t.low:.3f}-{t.high:.3f})", speedup(d, t), f"{p.quality:.2%}"])
    return Table(table(rows).rows, "speed-up: the dense model's median time over the pruned model's, both timed "
                                   f"in interleaved rounds ({r.latency_where}); where the two ranges of rounds "
                                   f"overlap it is marked '{INSIDE_NOISE}' and says nothing either way.")


def group_rows(r: SweepResult) -> list[tuple[str, list[str]]]:
    """(label, member layers) per channel group in layer order; a layer outside any group is its own row."""
    members: dict[object, list[str]] = {}
    for name, _ in r.layers:
        members.setdefault(r.groups.get(name, name), []).append(name)
    return [(names[0] + plus_layers(len(names) - 1), names)
            for names in members.values()]


def _figures(r: SweepResult) -> list[Optional[Figure]]:
    from .plots import bars_figure, tradeoff_figure, widths_figure
    budget = "MACs" if r.kind == "macs" else "measured latency"
    q = f"{r.quality_name} (%)"
    figs = [tradeoff_figure([(100 * p.macs_kept, 100 * p.quality, f"{p.budget:g}") for p in r.points],
                            (100.0, 100 * r.dense_quality), "MACs kept (%)", q,
                            f"{r.quality_name} against the share of MACs each pruned model keeps (points labelled "
                            f"by their budget, a kept fraction of {budget}); the star is the dense model. "
                            f"Measured on {r.eval_description}.", "quality_vs_macs.png"),
            tradeoff_figure([(p.latency.median, 100 * p.quality, f"{p.budget:g}") for p in r.points],
                            (r.dense_latency.median, 100 * r.dense_quality),
                            f"latency (ms, median; {r.latency_where})", q,
                            f"{r.quality_name} against measured latency: the median of interleaved rounds, the bars "
                            "span the fastest to the slowest round; the star is the dense model.",
                            "quality_vs_latency.png",
                            xerr=[(p.latency.median - p.latency.low, p.latency.high - p.latency.median)
                                  for p in r.points])]
    dense = dict(r.layers)
    groups = group_rows(r)
    figs.append(widths_figure([(label, dense[names[0]]) for label, names in groups],
                              [(f"{p.budget:g}", [p.widths.get(names[0], dense[names[0]]) for _, names in groups])
                               for p in sorted(r.points, key=lambda p: -p.budget)],
                              "Kept kernels (output channels) per channel group at each budget: the grey bar is the "
                              "dense width, each marker a budget. The layers of a group share their channels and "
                              "shrink together, so each group is one row, named by its first layer.",
                              legend_title=f"budget ({r.kind})"))
    figs.append(bars_figure([(label, r.sensitivity.get(names[0], 0.0)) for label, names in groups],
                            f"summed {r.criterion} scores of the group's channels",
                            f"How much each channel group matters to the {r.criterion} criterion: the summed scores "
                            "of its channels, counted once per group (a channel spans every layer of its group). "
                            "Low bars are what the sweep removes first; groups with more channels sum more.",
                            "sensitivity.png"))
    return figs


def sweep_document(r: SweepResult, figures: list[Figure], plotted: bool) -> Document:
    doc = Document(f"Pruning sweep: {r.model}")
    doc.add(Para(f"Budgets: kept fraction of {'MACs' if r.kind == 'macs' else 'measured latency'}; criterion "
                 f"{r.criterion}, scored once. Quality: {r.quality_name} on {r.eval_description}. Latency: "
                 f"{r.latency_where}, every model timed interleaved with the dense one."),
            summary_table(r))
    if r.notes:
        doc.add(Items(tuple(r.notes)))
    if not plotted:
        from .plots import NO_PLOTS
        doc.add(Para(f"Note: {NO_PLOTS}."))
    doc.blocks += figures
    rows = [["layer", "group", "dense"] + [f"{p.budget:g}" for p in r.points]]
    rows += [[n, str(r.groups.get(n, "-")), str(k)] + [str(p.widths.get(n, k)) for p in r.points] for n, k in r.layers]
    doc.add(Heading("Kept kernels per layer"), table(rows))
    doc.add(Heading("Run"), Items((r.provenance or Provenance()).lines()))
    return doc


def write_sweep_report(r: SweepResult, out: Path) -> Path:
    """Write sweep.md, the PNGs, sweep.html and sweep.json into ``out``; returns the HTML path."""
    from .plots import NO_PLOTS, pyplot
    plotted = pyplot() is not None
    if not plotted:
        logger.warning(NO_PLOTS)
    figures = [f for f in (_figures(r) if plotted else []) if f is not None]
    for f in figures:
        (out / f.name).write_bytes(f.png)
    r.plots = [f.name for f in figures]
    doc = sweep_document(r, figures, plotted)
    write_text_atomic(out / "sweep.md", markdown(doc))
    page = out / "sweep.html"
    write_text_atomic(page, html_page(doc))
    write_text_atomic(out / "sweep.json", json.dumps(asdict(r), indent=1, default=str))
    return page
