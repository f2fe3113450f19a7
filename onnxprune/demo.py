"""``onnxprune demo``: the whole job on the embedded digits CNN, with nothing but the package.

The model (7 convs with BatchNorm, a residual block and a squeeze-excitation
block) and 1,000 MNIST digits ship in ``onnxprune/data`` (see its README).
The demo scores every kernel with the oracle on 256 calibration digits,
prunes the model to a MAC budget, verifies the surgery, re-fits the layers
after the removed channels by least squares, and reports accuracy on 500
held-back digits before and after.
"""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np
import onnx

from .runtime import make_session


def demo_files() -> tuple[Path, Path]:
    base = resources.files("onnxprune") / "data"
    return Path(str(base / "demo_cnn.onnx")), Path(str(base / "demo_digits.npz"))


def demo_data() -> dict[str, np.ndarray]:
    """Calibration and test digits, preprocessed as the model expects ([N,1,28,28], /255)."""
    _, data_path = demo_files()
    with np.load(data_path) as d:
        return {
            "calib": (d["calib_images"].astype(np.float32) / 255.0)[:, None],
            "calib_labels": d["calib_labels"],
            "test": (d["test_images"].astype(np.float32) / 255.0)[:, None],
            "test_labels": d["test_labels"],
        }


def write_demo_files(folder: str) -> Path:
    """The demo model, 64 calibration digits as PNG files and all of them as an .npz, to try the CLI on.

    ``model.onnx``, ``images/`` (grayscale PNG) and ``calib.npz`` (uint8
    images and labels) in ``folder``: every line of the README's command-line
    section runs there as written (the tests run them).
    """
    import shutil

    from PIL import Image
    out = Path(folder)
    (out / "images").mkdir(parents=True, exist_ok=True)
    model_path, data_path = demo_files()
    shutil.copyfile(model_path, out / "model.onnx")
    with np.load(data_path) as d:
        images, labels = d["calib_images"], d["calib_labels"]
    for i, img in enumerate(images[:64]):
        Image.fromarray(img).save(out / "images" / f"digit_{i:03d}.png")
    np.savez(out / "calib.npz", images=images[:, :, :, None], labels=labels)
    return out


def accuracy(model: onnx.ModelProto, images: np.ndarray, labels: np.ndarray, batch: int = 250) -> float:
    sess = make_session(model)
    name = sess.get_inputs()[0].name
    preds = [sess.run(None, {name: images[i:i + batch]})[0].argmax(1) for i in range(0, len(images), batch)]
    return float((np.concatenate(preds) == labels).mean())


def run_demo(output: Optional[str] = None, target_macs: float = 0.5) -> str:
    """Prune the demo model and return the printed report; without ``output`` nothing is left on disk."""
    if output is not None:
        return _run_demo(output, target_macs, f"wrote {output}")
    with tempfile.TemporaryDirectory(prefix="onnxprune-demo-") as tmp:
        return _run_demo(str(Path(tmp) / "demo_cnn_pruned.onnx"), target_macs,
                         "the pruned model was not kept: pass -o FILE to keep it")


def _run_demo(output: str, target_macs: float, last_line: str) -> str:
    """The first screen a user sees: every figure says on which rows it was measured, and the speed-up whether
    it is outside the timing noise (a model this small runs in about a millisecond per digit batch, where the
    fixed cost of each call weighs as much as the MACs removed)."""
    from .latency.timing import LatencySettings, time_models

    model_path, _ = demo_files()
    data = demo_data()
    result = _prune_demo(model_path, output, data, target_macs)
    original = onnx.load(str(model_path))
    pruned = result.model
    rep = result.report
    n_test = len(data["test"])
    rep.before.accuracy = accuracy(original, data["test"], data["test_labels"])
    rep.after.accuracy = accuracy(pruned, data["test"], data["test_labels"])
    rep.extra["accuracy_data"] = f"{n_test} held-back test digits"
    feed = {"input": data["test"][:64]}
    timing = time_models({"before": original, "after": pruned}, feed, LatencySettings(rounds=15, runs=3))
    rep.before.latency_ms, rep.after.latency_ms = timing["before"].median, timing["after"].median
    rep.extra["latency_range_ms"] = {"before": timing["before"].as_list(), "after": timing["after"].as_list()}
    rep.extra["latency_where"] = "batch 64"
    lines = [f"onnxprune demo: digits CNN ({model_path.name}); accuracy and fidelity on the same {n_test} "
             "held-back test digits (never scored or fitted on)", "", rep.table(), "", last_line]
    return "\n".join(lines)


def _prune_demo(model_path: Path, output: str, data: dict[str, np.ndarray], target_macs: float):
    """Oracle scores on 256 calibration digits, score-per-MAC ranking in 3 steps, least-squares recovery;
    fidelity judged on the test digits (with their labels), where the accuracy is measured too."""
    from .pruning.pipeline import PruneConfig, run_pruning
    calib = {"input": data["calib"][:256]}
    config = PruneConfig(criterion="oracle", target_macs=target_macs, steps=3, recover="lsq",
                         progress=True)  # a bar on a terminal, log lines in a redirected log
    with tempfile.TemporaryDirectory(prefix="onnxprune-demo-") as tmp:  # as a user's --eval file: with labels
        test = Path(tmp) / "test_digits.npz"
        np.savez(test, input=data["test"], labels=data["test_labels"])
        return run_pruning(model_path, output, calib, config, evaluation=str(test))
