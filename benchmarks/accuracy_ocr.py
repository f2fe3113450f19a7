"""Fidelity without fine-tuning of the pruned PP-OCRv4 detector and recognizer (issue 14).

The OCR models come without labelled data, so the pruned model is compared
with the original on rendered text (benchmarks/textdata.py: Pillow and the
fonts in /usr/share/fonts; on Debian/Ubuntu ``apt-get install
fonts-dejavu-core``, without fonts Pillow's one built-in font is used and
the pages look alike). Calibration and measurement use different pages
(different seeds).

Detector (ppocrv4_det.onnx, pages of --det-size pixels): the probability
map binarised at 0.3 (DBNet's threshold); pixel IoU against the original's
binary map, pooled over all measured pages (and the mean per page), and
agreement of detected boxes: 4-connected components of each binary map,
matched one to one at box IoU >= 0.5; F1 of the matches against the
original's boxes.

Recognizer (ppocrv4_rec.onnx, lines 48 x 320): exact match of the
CTC-greedy decoding (arg-max per time step, repeats collapsed, blank 0
dropped) against the original's; only its convolutional backbone is
prunable (the attention neck is frozen by the analysis).

Each model goes the default path: criterion auto (the oracle, score per
MAC saved, whole network, where its cost is affordable; activation energy
with measured per-group sensitivity allocation beyond — PP-OCRv4 rec on
128 lines), round-to auto, on the calibration samples, then least
squares on the same samples — `onnxprune score MODEL --calib C -o s.json`
once, then `onnxprune prune MODEL -o OUT --scores s.json --calib C
--target-macs F` per budget (the README's "score once, prune to many
budgets"), here through the API.

Run: python benchmarks/accuracy_ocr.py [--model det|rec|both] [--det-calib N] [--det-eval N] ...
"""

from __future__ import annotations

import argparse
import json
from collections import deque
from pathlib import Path

import numpy as np

from common import SHARED, Timer, header, table, write_section
from onnxprune.calibration import normalize
from onnxprune.errors import OnnxPruneError
from onnxprune.distill import DistillSettings
from onnxprune.pruning.pipeline import PruneConfig, load_calibration, run_pruning, score_units
from onnxprune.pruning.prepare import prepare
from onnxprune.runtime import make_session
from onnxprune.pruning.schedule import criterion_for
from textdata import PPOCR_DET, PPOCR_REC, font_files, render_text_lines, render_text_pages

ROWS = Path(__file__).with_name("accuracy_ocr.json")  # rows of earlier runs, so one model can be rerun alone
THRESHOLD = 0.3


# ------------------------------------------------------------------ detector fidelity

def components(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (y0, x0, y1, x1), inclusive, of the 4-connected components of a 2-D boolean mask."""
    height, width = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    boxes = []
    for start in np.flatnonzero(mask):
        y, x = divmod(int(start), width)
        if seen[y, x]:
            continue
        seen[y, x] = True
        y0 = y1 = y
        x0 = x1 = x
        queue = deque([(y, x)])
        while queue:
            cy, cx = queue.popleft()
            y0, y1, x0, x1 = min(y0, cy), max(y1, cy), min(x0, cx), max(x1, cx)
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        boxes.append((y0, x0, y1, x1))
    return boxes


def box_iou(a, b) -> float:
    iy = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ix = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iy <= 0 or ix <= 0:
        return 0.0
    inter = iy * ix
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def matched(ref: list, got: list, at: float = 0.5) -> int:
    """Greedy one-to-one matches of boxes at IoU >= ``at``, best pairs first."""
    pairs = sorted(((box_iou(r, g), i, j) for i, r in enumerate(ref) for j, g in enumerate(got)), reverse=True)
    used_r, used_g, n = set(), set(), 0
    for iou, i, j in pairs:
        if iou < at:
            break
        if i not in used_r and j not in used_g:
            used_r.add(i)
            used_g.add(j)
            n += 1
    return n


def det_fidelity(ref_maps: np.ndarray, maps: np.ndarray) -> dict:
    a, b = ref_maps[:, 0] > THRESHOLD, maps[:, 0] > THRESHOLD
    inter = np.logical_and(a, b).sum((1, 2))
    union = np.logical_or(a, b).sum((1, 2))
    n_ref = n_got = n_match = 0
    for ma, mb in zip(a, b):
        ra, rb = components(ma), components(mb)
        n_ref, n_got, n_match = n_ref + len(ra), n_got + len(rb), n_match + matched(ra, rb)
    return {"map IoU (pooled)": f"{inter.sum() / max(union.sum(), 1):.3f}",
            "map IoU (mean per page)": f"{np.mean(inter / np.maximum(union, 1)):.3f}",
            "boxes matched (F1)": f"{2 * n_match / max(n_ref + n_got, 1):.3f}",
            "boxes (original / pruned)": f"{n_ref} / {n_got}"}


# ------------------------------------------------------------------ recognizer fidelity

def ctc_greedy(probs: np.ndarray) -> list[tuple[int, ...]]:
    """Label sequences of [N, T, classes] outputs: arg-max per step, repeats collapsed, blank (0) dropped."""
    out = []
    for best in probs.argmax(-1):
        keep = np.concatenate([[True], best[1:] != best[:-1]]) & (best != 0)
        out.append(tuple(int(c) for c in best[keep]))
    return out


def rec_fidelity(ref: list, got: list) -> dict:
    exact = np.mean([a == b for a, b in zip(ref, got)])
    return {"exact match of decoded text": f"{exact:.1%}"}


# ------------------------------------------------------------------ runs

def _run(model_name, x_cal, x_eval, budgets, fidelity, decode, rows, args, what, x_more=None):
    """``x_more``: further unlabeled samples that only ``--recover distill`` reads (scores and least squares
    keep ``x_cal``; the run holds its judge's rows back from ``x_cal`` as always)."""
    path = SHARED / "models" / model_name
    p = prepare(path, {"x": x_cal[:1].shape})
    cal = load_calibration({"x": x_cal}, p.original, batch_size=args.batch)
    fit_cal = cal
    if args.recover == "distill" and x_more is not None:
        fit_cal = load_calibration({"x": np.concatenate([x_cal, x_more])}, p.original, batch_size=args.batch)
    score_config = PruneConfig(batch_size=args.batch, progress=True)
    criterion = criterion_for(p, score_config, cal)
    with Timer() as t_score:
        scores = score_units(p, score_config, cal)
    print(f"{model_name}: {criterion} scores on {len(x_cal)} samples in {t_score.seconds:.0f} s", flush=True)
    ref = decode(_outputs(p.original, x_eval, args.batch))
    dense_macs = p.cost.dense_macs
    for budget in budgets:
        # the resolved criterion, as `onnxprune prune --calib` uses it: energy scores then allocate by sensitivity
        config = PruneConfig(target_macs=budget, batch_size=args.batch, calibration_samples=len(x_cal),
                             min_fidelity=0, criterion=criterion if args.resolve else "auto", recover=args.recover,
                             distill=DistillSettings(time_s=args.distill_time, epochs=100))
        row = {"model": model_name, "data": what, "target MACs": f"{budget:.0%}", "scores": criterion,
               "allocation": config.allocation_for(True)}
        if args.recover == "distill":
            row["recovery"] = f"distill ({args.distill_time:.0f} s, {len(fit_cal)} rows read)"
        try:
            with Timer() as t:
                res = run_pruning(p.original, None, None, config, scores=scores, prepared=p, calibration=fit_cal)
        except OnnxPruneError as exc:
            row["MACs kept"] = f"not reached: {exc}"
            rows.append(row)
            continue
        rep = res.report
        unrecovered = _pruned_only(p, res)
        row.update({"MACs kept": f"{rep.after.macs / dense_macs:.1%}",
                    "params kept": f"{rep.after.params / rep.before.params:.1%}"})
        for label, model in (("", res.model), (" (no recovery)", unrecovered)):
            for key, value in fidelity(ref, decode(_outputs(model, x_eval, args.batch))).items():
                if label and key not in ("map IoU (pooled)", "exact match of decoded text"):
                    continue
                row[key + label] = value
        row["wall time (s)"] = f"{t_score.seconds + t.seconds:.0f}"
        if "distillation" in rep.extra:
            print("distillation:", rep.extra["distillation"], flush=True)
        _keep(rows, row)
        print(row, flush=True)


def _pruned_only(p, res):
    from onnxprune.graph.surgery import prune_channels
    return prune_channels(p.analysis, res.removed_units)


def _keep(rows: list, row: dict) -> None:
    def key(r):
        return r["model"], r["target MACs"], r.get("allocation"), r.get("recovery")
    rows[:] = [r for r in rows if key(r) != key(row)] + [row]


def _outputs(model, x, batch):
    sess = make_session(model)
    return np.concatenate([sess.run(None, {"x": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def _nchw(images: np.ndarray, pre) -> np.ndarray:
    return np.ascontiguousarray(normalize(images, pre).astype(np.float32))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="both", choices=["det", "rec", "both"])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.85, 0.70, 0.50])
    ap.add_argument("--det-size", type=int, default=320, help="page height and width (multiple of 32)")
    ap.add_argument("--det-calib", type=int, default=16, help="calibration pages (oracle and least squares)")
    ap.add_argument("--det-eval", type=int, default=64, help="measured pages (never calibrated on)")
    ap.add_argument("--rec-calib", type=int, default=32, help="calibration text lines")
    ap.add_argument("--rec-eval", type=int, default=200, help="measured text lines")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--resolve", action=argparse.BooleanOptionalAction, default=True,
                    help="prune with the criterion auto resolved to (the CLI's default path: energy is allocated by "
                         "sensitivity); --no-resolve keeps 'auto' with the scores given, which allocates greedily")
    ap.add_argument("--recover", default="auto", choices=["auto", "distill"],
                    help="auto: least squares (the default path); distill: then fine-tuning against the dense model")
    ap.add_argument("--distill-time", type=float, default=600.0, help="seconds of fine-tuning per budget")
    ap.add_argument("--distill-extra", type=int, default=0,
                    help="further rendered lines (text) only the distillation reads")
    args = ap.parse_args()
    if not font_files():
        print("no fonts in /usr/share/fonts: rendering with Pillow's built-in font "
              "(install them with `apt-get install fonts-dejavu-core`)")
    rows: list = json.loads(ROWS.read_text()) if ROWS.exists() else []
    if args.model in ("det", "both"):
        size = args.det_size
        cal = _nchw(render_text_pages(args.det_calib, size, size, seed=101), PPOCR_DET)
        ev = _nchw(render_text_pages(args.det_eval, size, size, seed=202), PPOCR_DET)
        _run("ppocrv4_det.onnx", cal, ev, args.budgets, det_fidelity, lambda m: m, rows, args,
             f"{args.det_calib} / {args.det_eval} pages {size}x{size}")
        _write(rows, args)
    if args.model in ("rec", "both"):
        cal = _nchw(render_text_lines(args.rec_calib, 48, 320, seed=303), PPOCR_REC)
        ev = _nchw(render_text_lines(args.rec_eval, 48, 320, seed=404), PPOCR_REC)
        more = (_nchw(render_text_lines(args.distill_extra, 48, 320, seed=505), PPOCR_REC)
                if args.distill_extra else None)
        _run("ppocrv4_rec.onnx", cal, ev, args.budgets, rec_fidelity, ctc_greedy, rows, args,
             f"{args.rec_calib} / {args.rec_eval} lines 48x320", more)
        _write(rows, args)


def _write(rows: list, args) -> None:
    text = header("Fidelity without fine-tuning: PP-OCRv4 detector and recognizer (issue 14)")
    fonts = font_files()
    text += ("\nDefault path (criterion auto, column 'scores': the oracle where affordable, else activation energy "
             "with measured per-group sensitivity allocation, column 'allocation' — greedy where `auto` was kept with "
             "the scores given, as earlier runs did; round-to auto; least squares on the same calibration "
             "samples), compared with the original model on rendered text never calibrated "
             f"on (benchmarks/textdata.py, {len(fonts)} fonts from /usr/share/fonts"
             f"{'' if fonts else ': none, Pillow built-in font'}; `apt-get install fonts-dejavu-core`). Data: "
             "calibration / measured samples. Detector: probability map binarised at 0.3, pixel IoU with the "
             "original's map (pooled over pages, and mean per page); boxes are the 4-connected components of each "
             "map, matched one to one at IoU >= 0.5 (F1 against the original's boxes). Recognizer: exact match "
             "of the CTC-greedy label sequence with the original's. '(no recovery)': the same plan before least "
             "squares. Column 'recovery': least squares unless it says distill (`--recover distill` after least "
             "squares, with its time budget and the rows it read — the calibration lines plus further rendered "
             "lines only it reads). Wall time: scoring + selection + surgery + verification + recovery, 2 cores shared with "
             "other jobs.\n\n")
    for model, flag in (("ppocrv4_det.onnx", "det"), ("ppocrv4_rec.onnx", "rec")):
        if not any(r["model"] == model for r in rows):
            text += f"No {model} rows yet: `python benchmarks/accuracy_ocr.py --model {flag}` adds them.\n\n"
    cols = list(dict.fromkeys(c for r in rows for c in r))
    text += table(rows, cols)
    write_section("accuracy-ocr", text)
    ROWS.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
