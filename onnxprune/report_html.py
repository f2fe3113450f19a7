"""The sweep report: a Markdown table with PNG plots next to it, and one self-contained HTML page.

The table gives the speed-up of the medians and of the fastest rounds (a
busy machine only adds time, so the minima are the steadier comparison).
Plots (matplotlib, Agg backend): quality against MACs kept and against the
measured latency, kept width per layer at each budget, and the summed scores
per layer (how much each layer's channels matter to the criterion). The HTML
page embeds the same PNGs as base64 data URIs, so it can be mailed or
attached as one file. The sweep's results (:class:`SweepResult`) are defined
here, as the report's input, so ``sweep`` imports its report and never the reverse.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from .latency.measure import Timing

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
    sensitivity: dict[str, float]
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)  # the PNGs written beside the report (none without matplotlib)


def _plots(r: SweepResult, out: Path) -> list[Path]:
    """The PNGs written (none without matplotlib: the tables still carry every figure)."""
    try:
        import matplotlib
    except ImportError:
        logger.warning("matplotlib is not installed: the sweep report has tables only "
                       "(pip install \"onnxprune[plot]\" for the plots)")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pts = sorted(r.points, key=lambda p: p.macs_kept)
    q = [100 * p.quality for p in pts]
    paths = []
    for fname, xs, xlabel, dense_x in (
            ("quality_vs_macs.png", [100 * p.macs_kept for p in pts], "MACs kept (%)", 100.0),
            ("quality_vs_latency.png", [p.latency.median for p in pts], f"measured latency (ms, {r.latency_where})",
             r.dense_latency.median)):
        fig, ax = plt.subplots(figsize=(6, 4))
        if fname == "quality_vs_latency.png":
            ax.errorbar(xs, q, xerr=[[p.latency.median - p.latency.low for p in pts],
                                     [p.latency.high - p.latency.median for p in pts]], fmt="o-", label="pruned")
        else:
            ax.plot(xs, q, "o-", label="pruned")
        ax.plot([dense_x], [100 * r.dense_quality], "k*", markersize=12, label="dense")
        for p, x, y in zip(pts, xs, q):
            ax.annotate(f"{p.budget:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{r.quality_name} (%)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / fname, dpi=100)
        plt.close(fig)
        paths.append(out / fname)
    names = [n for n, _ in r.layers]
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(names)), 4))
    ax.plot(range(len(names)), [k for _, k in r.layers], "k--", label="dense")
    for p in sorted(r.points, key=lambda p: -p.budget):
        ax.plot(range(len(names)), [p.widths.get(n, 0) for n in names], marker=".", label=f"{p.budget:g}")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("kept kernels")
    ax.legend(title=f"budget ({r.kind})", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "widths.png", dpi=100)
    plt.close(fig)
    paths.append(out / "widths.png")
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(names)), 4))
    ax.bar(range(len(names)), [r.sensitivity.get(n, 0.0) for n in names])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel(f"summed {r.criterion} scores")
    fig.tight_layout()
    fig.savefig(out / "sensitivity.png", dpi=100)
    plt.close(fig)
    paths.append(out / "sensitivity.png")
    return paths


def _rows(r: SweepResult) -> list[list[str]]:
    d = r.dense_latency
    rows = [["budget", "MACs kept", "params kept", "latency (ms, median, range)", "speed-up",
             "speed-up of fastest rounds", r.quality_name]]
    rows.append(["dense", "100.0%", "100.0%", f"{d.median:.3f} ({d.low:.3f}-{d.high:.3f})", "1.00x", "1.00x",
                 f"{r.dense_quality:.2%}"])
    for p in r.points:
        t = p.latency
        rows.append([f"{p.budget:g}", f"{p.macs_kept:.1%}", f"{p.params_kept:.1%}",
                     f"{t.median:.3f} ({t.low:.3f}-{t.high:.3f})", f"{d.median / max(t.median, 1e-12):.2f}x",
                     f"{d.low / max(t.low, 1e-12):.2f}x", f"{p.quality:.2%}"])
    return rows


def _markdown(r: SweepResult, plots: list[str]) -> str:
    rows = _rows(r)
    lines = [f"# Pruning sweep: {r.model}", "",
             f"Budgets: kept fraction of {'MACs' if r.kind == 'macs' else 'measured latency'}; criterion "
             f"{r.criterion}, scored once. Quality: {r.quality_name} on {r.eval_description}. Latency: "
             f"{r.latency_where}, every model timed interleaved with the dense one.", "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    lines += [""] + [f"- {n}" for n in r.notes] + ([""] if r.notes else [])
    lines += [f"![{p}]({p})" for p in plots]
    wrows = [["layer", "dense"] + [f"{p.budget:g}" for p in r.points]]
    wrows += [[n, str(k)] + [str(p.widths.get(n, k)) for p in r.points] for n, k in r.layers]
    lines += ["", "## Kept kernels per layer", "", "| " + " | ".join(wrows[0]) + " |", "|" + "---|" * len(wrows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in wrows[1:]]
    return "\n".join(lines) + "\n"


_STYLE = ("<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style>")


def table(rows: list[list[str]]) -> str:
    """An HTML table: the first row is the header."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_page(markdown: str, title: str) -> str:
    """One self-contained HTML page of a Markdown report (``prune --report x.html``).

    Only what the reports write: ``|`` tables (their ``---`` rule dropped),
    ``#`` headings, ``-`` items and paragraphs.
    """
    parts: list[str] = []
    rows: list[list[str]] = []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-:") for c in cells):
                rows.append(cells)
            continue
        if rows:
            parts.append(table(rows))
            rows = []
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 6)
            parts.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            parts.append(f"<ul><li>{html.escape(line[2:])}</li></ul>")
        elif line.strip():
            parts.append(f"<p>{html.escape(line)}</p>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{_STYLE}</head>"
            f"<body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>\n")


def _html(r: SweepResult, out: Path, plots: list[str]) -> str:
    imgs = "".join(f'<figure><img alt="{p}" src="data:image/png;base64,'
                   f'{base64.b64encode((out / p).read_bytes()).decode()}"><figcaption>{p}</figcaption></figure>'
                   for p in plots)
    wrows = [["layer", "dense"] + [f"{p.budget:g}" for p in r.points]]
    wrows += [[n, str(k)] + [str(p.widths.get(n, k)) for p in r.points] for n, k in r.layers]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in r.notes)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>onnxprune sweep: {html.escape(r.model)}"
            f"</title>{_STYLE}</head><body>"
            f"<h1>Pruning sweep: {html.escape(r.model)}</h1><p>Budgets: kept fraction of "
            f"{'MACs' if r.kind == 'macs' else 'measured latency'}; criterion {html.escape(r.criterion)}, scored once. "
            f"Quality: {html.escape(r.quality_name)} on {html.escape(r.eval_description)}. Latency: "
            f"{html.escape(r.latency_where)}, timed interleaved with the dense model.</p>{table(_rows(r))}"
            f"<ul>{notes}</ul>{imgs}<h2>Kept kernels per layer</h2>{table(wrows)}</body></html>\n")


def write_sweep_report(r: SweepResult, out: Path) -> Path:
    """Write sweep.md, the PNGs, sweep.html and sweep.json into ``out``; returns the HTML path."""
    r.plots = plots = [p.name for p in _plots(r, out)]
    (out / "sweep.md").write_text(_markdown(r, plots))
    page = out / "sweep.html"
    page.write_text(_html(r, out, plots))
    (out / "sweep.json").write_text(json.dumps(asdict(r), indent=1, default=str))
    return page
