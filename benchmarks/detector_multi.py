"""A multi-output detector on the default path: per-level heads, fixed batch 1 (issue 22).

The issue's failing case was a detector with separate class and box-distribution outputs per pyramid
level and a fixed batch of 1, on which the default path ended in a traceback. No such model ships in
``../shared``, so this benchmark makes one out of the shared YOLOv8n export the way such exporters cut
it: the graph ends at the six head convolutions (box distribution, 64 channels, and class logits, 18
channels, at strides 8, 16 and 32) and the input is fixed to 1 x 3 x 320 x 320. The decoding the
exporter left out (DFL, anchors, sigmoid) is the dense model's own tail, extracted from the same file;
it turns the pruned model's six outputs into detections for judging only, so the fidelity is the same
detection F1 against the dense model as ``detector.py`` reports, on the 250 images never calibrated on.

    python benchmarks/detector_multi.py [--budgets 0.7]
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx.utils import Extractor

from common import SHARED, header, imagenet_images, imagenet_split, table, write_section
from default_path import imagenet_calib_folder, run_cli
from onnxprune.calibration import Preprocess
from onnxprune.fidelity import guess_task, measure_fidelity
from onnxprune.fidelity.tasks import with_conf
from onnxprune.runtime import make_session

MODEL = SHARED / "models" / "yolov8n_320.onnx"
HEADS = [f"/model.22/{branch}.{level}/{branch}.{level}.2/Conv_output_0" for level in range(3) for branch in ("cv2", "cv3")]


def split_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(the per-level multi-output detector with a fixed 1 x 3 x 320 x 320 input, the decoding tail)."""
    heads = Extractor(model).extract_model(["images"], HEADS)
    for dim, value in zip(heads.graph.input[0].type.tensor_type.shape.dim, (1, 3, 320, 320)):
        dim.Clear()
        dim.dim_value = value
    del heads.graph.value_info[:]
    for out in heads.graph.output:
        out.type.tensor_type.ClearField("shape")
    heads = onnx.shape_inference.infer_shapes(heads, strict_mode=True)
    heads.metadata_props.extend(model.metadata_props)
    tail = Extractor(model).extract_model(HEADS, ["output0"])
    return heads, tail


def detections(heads: onnx.ModelProto, tail: onnx.ModelProto, x: np.ndarray) -> list[list[np.ndarray]]:
    """output0 of the dense decoding applied to the six head outputs, one image at a time (batch 1)."""
    hs, ts = make_session(heads), make_session(tail)
    names = [o.name for o in heads.graph.output]
    out = []
    for i in range(len(x)):
        levels = hs.run(None, {"images": x[i:i + 1]})
        out.append([ts.run(None, dict(zip(names, levels)))[0]])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", default="0.7")
    ap.add_argument("--extra", default="", help="more CLI flags for every run")
    args = ap.parse_args()
    calib_files, _, dev_files, _ = imagenet_split()
    x = imagenet_images(dev_files, Preprocess(size=(320, 320), letterbox=True))
    heads, tail = split_model(onnx.load(str(MODEL)))
    ref = detections(heads, tail, x)
    spec = guess_task(tail, [np.concatenate([r[0] for r in ref])], names=["output0"])
    flags = ("--letterbox", "--size", "320x320", "--batch-size", "1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, imagenet_calib_folder(calib_files) as calib:
        path = Path(tmp) / "yolov8n_heads.onnx"
        onnx.save(heads, str(path))
        for budget in [float(b) for b in args.budgets.split(",")]:
            pruned, wall, cpu = run_cli(path, calib, budget, flags, tuple(shlex.split(args.extra)))
            out = detections(pruned, tail, x)
            row = {"MACs kept (asked)": f"{budget:.0%}", "run time (wall / CPU)": f"{wall / 60:.1f} / {cpu / 60:.1f} min",
                   "outputs": len(pruned.graph.output)}
            for conf in (0.25, 0.1):
                v = measure_fidelity(with_conf(spec, conf), ref, out).values
                row[f"F1 @{conf}"] = f"{v['detection_f1']:.3f}"
                row[f"P / R @{conf}"] = f"{v['precision']:.3f} / {v['recall']:.3f}"
                row[f"dense boxes @{conf}"] = int(v["reference_detections"])
            rows.append(row)
            print(row, flush=True)
    text = (header("Multi-output detector (per-level heads, fixed batch 1), default path (issue 22)")
            + "\nThe shared YOLOv8n cut at its six head convolutions (box distribution and class logits per "
            + "level, 3 x 2 outputs) with its input fixed to 1 x 3 x 320 x 320; command per budget: `onnxprune "
            + f"prune yolov8n_heads.onnx -o OUT --calib <first 250 imagenet_dev files> {' '.join(flags)} "
            + f"--target-macs F --min-fidelity 0 {args.extra}`. The outputs are raw features to onnxprune (task "
            + "generic, per-channel normalised cost); for judging only, the dense model's own decoding turns "
            + "them into detections, matched to the dense model's on the other 250 images (class-wise NMS "
            + "0.45, same class, IoU >= 0.5).\n\n" + table(rows, list(rows[0])))
    write_section("detector-multi-output", text)
    print(text)


if __name__ == "__main__":
    main()
