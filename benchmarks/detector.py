"""YOLOv8n (shared) on the default path: detections of the pruned model against the dense model's (issue 22).

The command a user runs — ``onnxprune prune yolov8n_320.onnx -o OUT --calib <250 calibration images>
--letterbox --target-macs F`` (the size comes from the model's ``imgsz`` metadata) — timed as a separate
process, then judged on the other 250 images of ``imagenet_dev`` (never calibrated on): the pruned model's
detections matched to the dense model's (best class >= confidence, class-wise NMS at IoU 0.45, same class
and IoU >= 0.5), at confidence 0.25 and 0.1, with mAP50-95 on the dense detections as truth; and the
speed-up at batch 1, timed interleaved with the dense model.

    python benchmarks/detector.py [--budgets 0.85,0.7,0.5] [--extra "--back-off"] [--section NAME]
"""

from __future__ import annotations

import argparse
import shlex

import numpy as np
import onnx

from common import SHARED, header, imagenet_images, imagenet_split, table, write_section
from default_path import imagenet_calib_folder, run_cli
from onnxprune.calibration import Preprocess
from onnxprune.latency.timing import LatencySettings, time_models
from onnxprune.fidelity import guess_task, measure_fidelity
from onnxprune.fidelity.tasks import with_conf
from onnxprune.runtime import make_session

MODEL = SHARED / "models" / "yolov8n_320.onnx"
SIZE = (320, 320)


def _preprocess() -> tuple[Preprocess, tuple[str, ...]]:
    """Letterbox (Ultralytics' own preprocessing) when this onnxprune has it, else a plain resize."""
    try:
        return Preprocess(size=SIZE, letterbox=True), ("--letterbox",)
    except TypeError:
        return Preprocess(size=SIZE), ("--size", "320x320")


def _outputs(model: onnx.ModelProto, x: np.ndarray, batch: int = 25) -> list[list[np.ndarray]]:
    sess = make_session(model)
    return [[sess.run(None, {"images": x[i:i + batch]})[0]] for i in range(0, len(x), batch)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", default="0.85,0.7,0.5")
    ap.add_argument("--extra", default="", help="more CLI flags for every run, e.g. '--back-off'")
    ap.add_argument("--section", default="detector-yolov8n",
                    help="RESULTS.md section to write (a run with --extra goes beside the default path's)")
    args = ap.parse_args()
    calib_files, _, dev_files, _ = imagenet_split()
    pre, flags = _preprocess()
    x = imagenet_images(dev_files, pre)
    dense = onnx.load(str(MODEL))
    ref = _outputs(dense, x)
    spec = guess_task(dense, [np.concatenate([r[0] for r in ref])], names=["output0"])
    rows = []
    with imagenet_calib_folder(calib_files) as calib:
        for budget in [float(b) for b in args.budgets.split(",")]:
            extra = tuple(shlex.split(args.extra))
            printed: list[str] = []
            pruned, wall, cpu = run_cli(MODEL, calib, budget, flags, extra, printed)
            out = _outputs(pruned, x)
            row = {"MACs kept (asked)": f"{budget:.0%}", "run time (wall / CPU)": f"{wall / 60:.1f} / {cpu / 60:.1f} min"}
            for conf in (0.25, 0.1):
                fid = measure_fidelity(with_conf(spec, conf), ref, out)
                v = fid.values
                row[f"F1 @{conf}"] = f"{v['detection_f1']:.3f}"
                row[f"P / R @{conf}"] = f"{v['precision']:.3f} / {v['recall']:.3f}"
                row[f"dense boxes @{conf}"] = int(v["reference_detections"])
                if conf == 0.25:
                    row["mAP50-95 vs dense"] = f"{v['map50_95']:.3f}"
            t = {k: v.as_list() for k, v in time_models({"dense": dense, "pruned": pruned}, {"images": x[:1]},
                                                        LatencySettings(rounds=15, runs=5)).items()}
            row["speed-up batch 1 (median, range)"] = (f"{t['dense'][0] / t['pruned'][0]:.2f}x "
                                                        f"({t['dense'][0]:.1f} / {t['pruned'][0]:.1f} ms; "
                                                        f"ranges {t['dense'][1]:.1f}-{t['dense'][2]:.1f} / "
                                                        f"{t['pruned'][1]:.1f}-{t['pruned'][2]:.1f})")
            said = [x.strip() for x in printed if "distill" in x.lower()]
            if said:
                row["distillation (as the run reported it)"] = "; ".join(said)
            rows.append(row)
            print(row, flush=True)
    cols = list(rows[0])
    title = "default path" + (f" with `{args.extra}`" if args.extra else "")
    text = (header(f"YOLOv8n detector, {title}: detections vs the dense model")
            + f"\nCommand per budget: `onnxprune prune yolov8n_320.onnx -o OUT --calib <first 250 imagenet_dev files> "
            + f"{' '.join(flags)} --target-macs F --min-fidelity 0 {args.extra}` (criterion auto, allocation, least "
            + "squares as by default). Judged on the other 250 images: detections of the pruned model matched to "
            + "the dense model's (class-wise NMS 0.45, same class, IoU >= 0.5).\n\n" + table(rows, cols))
    write_section(args.section, text)
    print(text)


if __name__ == "__main__":
    main()
