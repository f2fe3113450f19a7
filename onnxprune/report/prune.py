"""The content of a prune (or apply) report, built once for the terminal, Markdown, HTML and JSON alike.

Order: how the units were chosen (method), before/after table (params, MACs,
size, latency with its noise verdict, accuracy), fidelity to the dense model
in the user's terms (after recovery, before it, quantized; the floor), the
kernels removed, the int8 variants, the per-layer table and the
verification. Files also get where the figures come from (command line,
date, machine, calibration set); the HTML page adds the plots.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional

from .document import Document, Heading, Items, Para, pipe_rows, table
from .groups import plus_layers

Report = Any  # onnxprune.report.model.Report, not imported: it renders itself through this module

LAYERS_HEADING = "Kept kernels per layer"
INSIDE_NOISE = "inside the timing noise"


def prune_document(r: Report, title: str = "", figures: bool = False, file: Optional[bool] = None) -> Document:
    """``figures``: the HTML page's plots; ``file`` (default: with a title) adds the run's provenance."""
    doc = Document(title)
    if r.method:
        doc.add(Para(f"method: {r.method}"))
    doc.add(table(_main_rows(r)))
    fid = fidelity_lines(r)
    if fid:
        doc.add(Items(tuple(fid)))
    doc.add(Para(f"pruned kernels: {r.removed_kernels} of {r.prunable_kernels} prunable "
                 f"({r.pruned_percentage:.1f}%)"))
    if r.variants:
        from .compare import variants_table
        doc.add(pipe_rows(variants_table(r.variants)))
    changed = [lc for lc in r.layers if lc.before != lc.after]
    if changed:
        doc.add(Heading(LAYERS_HEADING), table([("layer", "op", "kernels before", "after")]
                                                + [(lc.name, lc.op, lc.before, lc.after) for lc in changed]))
    if r.verification:
        doc.add(Items(tuple(r.verification.splitlines())))
    if figures:
        _add_figures(doc, r)
    if (bool(title) if file is None else file) and r.provenance is not None:
        doc.add(Heading("Run"), Items(r.provenance.lines()))
    return doc


def _main_rows(r: Report) -> list[tuple]:
    b, a = r.before, r.after
    rows = [("", "before", "after", "kept"),
            ("params", f"{b.params:,}", f"{a.params:,}", _pct(a.params, b.params)),
            ("MACs", f"{b.macs:,}", f"{a.macs:,}", _pct(a.macs, b.macs)),
            ("file size", _mb(b.size_bytes), _mb(a.size_bytes), _pct(a.size_bytes, b.size_bytes))]
    lat = r.extra.get("latency")
    if b.latency_ms is not None and a.latency_ms is not None:
        rng = r.extra.get("latency_range_ms")
        bt, at = ((_ms(lat["dense_ms"]), _ms(lat["pruned_ms"])) if lat else
                  (_ms(rng["before"]), _ms(rng["after"])) if rng else
                  (f"{b.latency_ms:.2f} ms", f"{a.latency_ms:.2f} ms"))
        where = lat["where"] if lat else r.extra.get("latency_where")
        rows.append((f"latency (median{', ' + where if where else ''})", bt, at, speedup_text(r)))
    if lat:
        rows.append(("latency target", "", f"{lat['measured_fraction']:.1%} measured", _target_text(lat)))
    if b.accuracy is not None and a.accuracy is not None:
        on = r.extra.get("accuracy_data")
        rows.append((f"accuracy{f' ({on})' if on else ''}", f"{b.accuracy:.2%}", f"{a.accuracy:.2%}",
                     f"{(a.accuracy - b.accuracy) * 100:+.2f} pt"))
    return rows


def speedup_text(r: Report) -> str:
    """'speed-up 1.53x', or that the difference is inside the timing noise (the ranges overlap)."""
    b, a = r.before.latency_ms, r.after.latency_ms
    text = f"speed-up {b / max(a, 1e-9):.2f}x"
    lat = r.extra.get("latency")
    rng = r.extra.get("latency_range_ms")
    if lat is not None and not lat.get("outside_noise", True):
        return f"{text} ({INSIDE_NOISE})"
    if rng is not None and not (rng["after"][2] < rng["before"][1] or rng["after"][1] > rng["before"][2]):
        return f"{text} ({INSIDE_NOISE})"
    return text


def fidelity_lines(r: Report) -> list[str]:
    """Fidelity to the dense model in the user's terms: after recovery, before it, quantized; the floor."""
    out = []
    for key, label in (("", "fidelity to dense"), ("fidelity_before_recovery", "  before recovery"),
                       ("fidelity_before_distillation", "  before distillation"),
                       ("fidelity_quantized", "  quantized")):
        fid = r.after.fidelity if not key else r.extra.get(key)
        if fid is not None:
            out.append(f"{label}: {fid.text() if hasattr(fid, 'text') else _fidelity_text(fid)}")
    for key in ("fidelity_note", "task", "back_off", "floor", "storage"):
        if key in r.extra:
            out.append(f"{key.replace('_', '-').replace('-note', '')}: {r.extra[key]}")
    return out


def _add_figures(doc: Document, r: Report) -> None:
    from .plots import NO_PLOTS, bars_figure, importance_figure, pyplot, tradeoff_figure, widths_figure
    if pyplot() is None:
        doc.add(Para(f"Note: {NO_PLOTS}."))
        return
    b, a = r.before, r.after
    kept = [("params", a.params / max(b.params, 1)), ("MACs", a.macs / max(b.macs, 1)),
            ("file size", a.size_bytes / max(b.size_bytes, 1))]
    noisy = False
    if b.latency_ms and a.latency_ms:
        kept.append(("latency (median)", a.latency_ms / b.latency_ms))
        noisy = INSIDE_NOISE in speedup_text(r)
    doc.add(Heading("Plots"),
            bars_figure([(k, 100 * v) for k, v in kept], "kept (% of the dense model)",
                        "What the pruned model keeps of the dense one: parameters, MACs, file size"
                        + (" and median latency" if len(kept) > 3 else "")
                        + (" (hatched: the latency difference is inside the timing noise, so it says nothing either "
                           "way)" if noisy else "") + ".", "kept.png",
                        values=[f"{v:.1%}" for _, v in kept], faint=[False] * 3 + [noisy],
                        reference=(100.0, "dense model")))
    tried = r.extra.get("back_off_points") or []
    if len(tried) > 1 and r.after.fidelity is not None:
        from ..fidelity.measure import LABELS
        fid = r.after.fidelity
        name = f"fidelity to dense ({LABELS.get(fid.headline, fid.headline)}, %)"
        written = r.after.macs / max(r.before.macs, 1)
        pts = [(100 * m, 100 * f, "written" if abs(m - written) < 1e-9 else "") for m, f in tried]
        doc.add(tradeoff_figure(pts, (100.0, 100.0), "MACs kept (%)", name,
                                f"Fidelity to the dense model against the MACs kept, for every budget the back-off "
                                f"tried (measured on {fid.samples} {fid.data}); the star is the dense model"
                                + (f", the line the floor {fid.floor:g}" if fid.floor is not None else "")
                                + ". The written model is the most pruned that meets the floor.",
                                "fidelity_vs_macs.png", floor=100 * fid.floor if fid.floor is not None else None))
    rows, kept_w = layer_rows(r)
    if rows:
        doc.add(widths_figure(rows, [("pruned", kept_w)],
                              "Kept kernels (output channels) per channel group: grey the dense width, blue what "
                              "the pruned model keeps. Layers of one group share their channels and shrink "
                              "together, so each group is one row, named by its first layer.", "widths.png"))
    if r.importance:
        criterion = r.method.split(" scores")[0] if " scores" in r.method else "criterion"
        doc.add(importance_figure([(g.label, g.total - g.removed, g.removed) for g in r.importance],
                                  f"summed {criterion} scores of the group's channels",
                                  f"How much each channel group matters to the {criterion} criterion, and what the "
                                  "run took from it: each bar is the summed scores of the group's channels (counted "
                                  "once per group, though a channel spans every layer of it), orange the removed "
                                  "channels' part, labelled with its share. Groups with more channels sum more. The "
                                  "selection does not read these sums alone (it weighs what a channel costs, or each "
                                  "group's measured loss after re-fitting; see the method line), so a group can lose "
                                  "more or less than its bar suggests.", "importance.png"))


def layer_rows(r: Report) -> tuple[list[tuple[str, int]], list[int]]:
    """One row per channel group with a pruned layer (the layer itself when it has no group): (label, dense), kept."""
    members: dict[object, list] = defaultdict(list)
    for lc in r.layers:
        members[lc.group if lc.group is not None else lc.name].append(lc)
    rows, kept = [], []
    for lcs in members.values():
        if all(lc.before == lc.after for lc in lcs):
            continue
        first = lcs[0]
        label = first.name + plus_layers(len(lcs) - 1)
        rows.append((label, first.before))
        kept.append(first.after)
    return rows, kept


def _ms(t: list) -> str:
    """'2.21 ms (2.13-2.27)': median and the range over timing rounds."""
    return f"{t[0]:.2f} ms ({t[1]:.2f}-{t[2]:.2f})"


def _target_text(lat: dict) -> str:
    if lat["missed_by"] > 0:
        return f"target {lat['target']:.0%} MISSED by {100 * lat['missed_by']:.1f} points"
    if not lat.get("outside_noise", True):
        return f"target {lat['target']:.0%}: could not tell (timing ranges overlap)"
    return f"target {lat['target']:.0%} met"


def _pct(a: float, b: float) -> str:
    return f"{a / b:.1%}" if b else "-"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _fidelity_text(fid: dict) -> str:
    """'rel. L2 0.149, arg-max agreement 100.0%' (keys stay machine-friendly in the JSON report)."""
    names = {"rel_l2": "rel. L2", "argmax_agreement": "arg-max agreement"}
    return ", ".join(f"{names.get(k, k)} {v:.1%}" if k == "argmax_agreement" else f"{names.get(k, k)} {v:.4g}"
                     for k, v in fid.items())

