"""Memory of ``--recover distill`` (issue 24): the peak resident memory the fine-tuning adds, against the
goal "4x the model's weights plus one batch of activations".

Each model is pruned by least squares first (criterion energy, for time: the
memory of the training does not depend on how the channels were chosen); then
the process's resident set (VmRSS, sampled every 20 ms in a thread) is read
just before :class:`DistillPass` (torch and onnx2torch already imported: a library's code is not what
the training holds) and at its peak. The difference is what the
training holds: the torch module's weights and gradients, Adam's two moments,
the weight average, the autograd activations of one batch, the dense model's
onnxruntime session and the cache of its outputs. "One batch of activations"
is the sum of every float tensor's size in the pruned model for one batch
(from shape inference), counted once (the forward pass; autograd keeps about
that much for the backward).

    python benchmarks/distill_memory.py [--models resnet56 lite0] [--seconds 60]
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import onnx

from common import SHARED, cifar, header, imagenet_images, imagenet_split, table, write_section

MODELS = {"resnet56": ("ResNet-56", "resnet56_cifar10.onnx", 0.5), "lite0": ("EfficientNet-Lite0",
                                                                           "efficientnet_lite0.onnx", 0.7)}
MB = 1 << 20


def rss() -> int:
    """The process's resident set in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class Peak:
    """The highest resident set seen while the block runs."""

    def __enter__(self) -> "Peak":
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) * 4 for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)


def activation_bytes(model: onnx.ModelProto, batch: int) -> int:
    """Every float tensor a forward pass of ``batch`` rows computes, summed (shapes from shape inference)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for v in m.graph.input:
        dims = v.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    m = onnx.shape_inference.infer_shapes(m)
    total = 0
    for v in list(m.graph.value_info) + list(m.graph.output):
        t = v.type.tensor_type
        if t.elem_type != onnx.TensorProto.FLOAT or not all(d.HasField("dim_value") for d in t.shape.dim):
            continue
        total += int(np.prod([d.dim_value for d in t.shape.dim])) * 4
    return total


def run(key: str, seconds: float) -> dict:
    from onnxprune import PruneConfig
    from onnxprune.distill import DistillSettings
    from onnxprune.passes.distill import DistillPass
    from onnxprune.pruning.pipeline import distill_split, judged, prepare_run, run_pruning
    title, file, target = MODELS[key]
    model = onnx.load(str(SHARED / "models" / file))
    if key == "lite0":
        x = imagenet_images(imagenet_split()[0])
    else:
        x, _ = cifar("calib")
    source = {model.graph.input[0].name: x}
    settings = DistillSettings(time_s=seconds)
    lsq = run_pruning(model, None, source, PruneConfig(criterion="energy", target_macs=target, min_fidelity=0))
    cfg = PruneConfig(criterion="energy", target_macs=target, recover="distill", distill=settings, min_fidelity=0)
    p, cal = prepare_run(model, source, cfg, hold_out=True)
    cal, rows = distill_split(cal, cfg)
    cal, judge, _ = judged(p, cal, cfg)
    from onnxprune.distill.engine import require_engine
    require_engine()  # torch and onnx2torch loaded before the baseline: their code is not the training's memory
    with Peak() as peak:
        result = DistillPass(p.model, rows if rows is not None else cal, judge, settings)(lsq.model)
    w, a = weight_bytes(lsq.model), activation_bytes(lsq.model, settings.batch)
    added = peak.peak - peak.start
    row = {"model": f"{title} at {target:.0%} MACs", "weights (MB)": f"{w / MB:.1f}",
           f"one batch of {settings.batch}, activations (MB)": f"{a / MB:.1f}",
           "goal: 4x weights + activations (MB)": f"{(4 * w + a) / MB:.1f}",
           "peak added by distillation (MB)": f"{added / MB:.1f}",
           "ratio to goal": f"{added / (4 * w + a):.2f}",
           "RSS before / peak (MB)": f"{peak.start / MB:.0f} / {peak.peak / MB:.0f}",
           "steps": result.outcome.steps if result.outcome is not None else "-"}
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--seconds", type=float, default=60.0, help="distillation budget per model")
    args = ap.parse_args()
    rows = [run(k, args.seconds) for k in args.models]
    text = (header("Distillation memory: peak resident memory added by --recover distill")
            + "\nVmRSS sampled every 20 ms around the fine-tuning alone (after least squares, with torch and "
            "onnx2torch already imported; the dense model's "
            "onnxruntime session, the torch module, its gradients, Adam's moments, the weight average, one batch's "
            "autograd activations and the cache of teacher outputs all count). Activations: every float tensor of "
            "the pruned model for one batch, from shape inference.\n\n" + table(rows, list(rows[0])))
    write_section("distill-memory", text)
    print(text)


if __name__ == "__main__":
    main()
