"""Shared helpers for the benchmarks: data sets from ../shared, accuracy, result tables."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import onnx

from onnxprune.calibration import Preprocess
from onnxprune.runtime import make_session

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ONNXPRUNE_SHARED", REPO.parent / "shared"))
CIFAR_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
CIFAR_STD = np.array([0.229, 0.224, 0.225], np.float32)
EFFNET_PRE = Preprocess(size=(224, 224), resize=256, scale=1 / 255, mean=(0.498,), std=(0.502,))


def cifar(split: str, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 images preprocessed for the shared ResNets (NCHW float32) and labels."""
    with np.load(SHARED / "data" / f"cifar10_{split}.npz") as d:
        images, labels = d["images"], d["labels"]
    if n is not None:
        images, labels = images[:n], labels[:n]
    x = (images.astype(np.float32) / 255.0 - CIFAR_MEAN) / CIFAR_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), labels.astype(np.int64)


def imagenet_split() -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """The README's split of imagenet_dev: first 250 files calibrate, the other 250 evaluate."""
    rows = (SHARED / "data" / "imagenet_dev" / "labels.tsv").read_text().strip().splitlines()[1:]
    files = [r.split("\t")[0] for r in rows]
    labels = np.array([int(r.split("\t")[1]) for r in rows], np.int64)
    return files[:250], labels[:250], files[250:], labels[250:]


def imagenet_images(files: list[str], pre: Preprocess = EFFNET_PRE) -> np.ndarray:
    from onnxprune.calibration import load_image, normalize
    folder = SHARED / "data" / "imagenet_dev"
    arr = np.stack([load_image(folder / f, pre.size, pre) for f in files])
    return normalize(arr, pre)


def with_mirrors(x: np.ndarray) -> np.ndarray:
    """Each NCHW image followed by its mirror image, so that the recovery's held-back fifth
    (the last images) never holds the mirror of an image it fitted on."""
    return np.stack([x, x[..., ::-1]], 1).reshape(-1, *x.shape[1:])


def accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, batch: int = 250) -> float:
    sess = make_session(model)
    name = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {name: x[i:i + batch]})[0].argmax(-1) for i in range(0, len(x), batch)])
    return float((pred == y).mean())


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:  # machines with the same model name differ between sessions: say what the CPU can do
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0]
        cpu += " (AVX-512)" if " avx512f" in flags else (" (AVX2)" if " avx2" in flags else "")
    except (OSError, IndexError):
        pass
    import onnxruntime
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}"


def header(title: str) -> str:
    cmd = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    return f"## {title}\n\nMachine: {machine()}. Date: {date.today().isoformat()}. Command: `{cmd}`.\n"


def table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_section(name: str, text: str) -> None:
    """Replace (or append) one section of benchmarks/RESULTS.md, delimited by HTML comments."""
    path = REPO / "benchmarks" / "RESULTS.md"
    body = path.read_text() if path.exists() else "# Benchmark results\n\nEvery table below was measured by the command under its heading.\n"
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in body and end in body:
        before = body.split(start)[0]
        after = body.split(end, 1)[1]
        body = before + block + after
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    path.write_text(body)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def cached(path: str | None, compute) -> dict[int, float]:
    """``compute()`` (a dict of int -> float, e.g. unit scores), read from / written to the JSON ``path`` if given:
    two benchmarks that score the same model on the same images then score it once."""
    import json
    if path and Path(path).is_file():
        return {int(k): float(v) for k, v in json.loads(Path(path).read_text()).items()}
    value = compute()
    if path:
        Path(path).write_text(json.dumps({str(k): v for k, v in value.items()}))
    return value


def resnet56_setup(score_images: int = 128, fit_images: int = 256):
    """ResNet-56 as the speed benchmarks use it: (prepared, scoring calibration, fitting calibration, dev x, dev y).

    Calibration rows are a seeded random subset of cifar10_calib.npz (the file is sorted by class), the
    scoring rows a prefix of the fitting rows; accuracy is measured on the dev set only.
    """
    from onnxprune.calibration.dataset import load_calibration
    from onnxprune.pruning.prepare import prepare
    xc_all, _ = cifar("calib")
    perm = np.random.default_rng(0).permutation(len(xc_all))
    xd, yd = cifar("dev")
    p = prepare(SHARED / "models" / "resnet56_cifar10.onnx")
    cal_score = load_calibration({"input": xc_all[perm[:score_images]]}, p.original, batch_size=64)
    cal_fit = load_calibration({"input": xc_all[perm[:fit_images]]}, p.original, batch_size=64)
    return p, cal_score, cal_fit, xd, yd
