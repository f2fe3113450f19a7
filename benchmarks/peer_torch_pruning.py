"""Peer benchmark: Torch-Pruning on the models, data and MAC budgets of benchmarks/accuracy.py.

Torch-Pruning (pip ``torch-pruning``) prunes PyTorch modules, so each shared ONNX model is first
converted with onnx2torch and checked against onnxruntime. Then, for every scope and importance
criterion, Torch-Pruning's ``MetaPruner`` with global ranking (``global_pruning=True``) removes
channels in small iterative steps (``pruning_ratio=1.0``, ``iterative_steps=100``: the schedule
grows by 1% of the scope's channels per step) until the MACs that
``tp.utils.count_ops_and_params`` counts are at most 85%, 70%, 55% and 40% of dense. The model
that first meets a budget is evaluated as it is, with no fine-tuning, and pruning continues from
it to the next budget. The wall time of a row is the time spent pruning until that budget was
met (dependency graph, gradients, steps and MAC counting), evaluation excluded.

Criteria: ``l1`` = ``tp.importance.MagnitudeImportance(p=1)``, ``taylor`` =
``tp.importance.TaylorImportance()`` with gradients of the cross-entropy of calibration images
and their labels computed once on the dense model before pruning (Torch-Pruning prunes the
``.grad`` tensors along with the weights, so later steps use the same gradients), ``random`` =
``tp.importance.RandomImportance()`` (torch seed 0). Importance defaults otherwise (group mean,
mean normalizer).

Models and data (``$ONNXPRUNE_SHARED``, default ../shared):
* ResNet-56 (CIFAR-10): Taylor gradients on the first 256 calibration images; top-1 on all
  5,000 dev images. Scopes: "internal" (``ignored_layers`` = the stem conv, the second conv of
  every block and the classifier, so the residual streams keep their width) and "whole"
  (only the classifier ignored: Torch-Pruning prunes the residual streams, including the
  zero-padded option-A shortcuts).
* EfficientNet-Lite0 (ImageNet sample): whole network, classifier ignored; Taylor gradients on
  the first 64 of the 250 calibration files (256 at 224 px are too slow on 2 CPU cores);
  top-1 on the other 250 files.

Any failure (conversion, dependency graph, a pruning step, running the pruned model) is caught
and written to the table with its message.

Environment (kept apart from the project's own; torch 2.13.0 is the CPU wheel on this machine's
disk, and onnx2torch's requirement of torchvision is skipped because PyPI's torchvision does not
import beside that wheel)::

    python3 -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install torch==2.13.0
    /tmp/benchvenv/bin/pip install --no-deps torch-pruning==1.6.1 onnx2torch==1.5.15
    /tmp/benchvenv/bin/pip install onnx onnxruntime onnx-graphsurgeon numpy pillow tqdm
    /tmp/benchvenv/bin/pip install -e . --no-deps      # from the repository root, for common.py

(the project's ``bench`` extra lists the same peers: torch, torch-pruning, onnx2torch). onnx2torch
imports ``torchvision.ops`` when it loads, for its NMS and RoiAlign converters; neither model uses
them, so without torchvision this script puts an empty stand-in module in its place.

Run: /tmp/benchvenv/bin/python benchmarks/peer_torch_pruning.py [--models resnet56 efficientnet]
     [--criteria l1 taylor random] [--out benchmarks/RESULTS_peer.md]
Writes benchmarks/RESULTS_peer.md (a fragment to merge into RESULTS.md).
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import os
import sys
import time
import traceback
import types
from datetime import date
from pathlib import Path

import numpy as np

try:  # onnx2torch imports torchvision.ops at load time (NMS/RoiAlign converters only)
    import torchvision  # noqa: F401
except Exception:  # noqa: BLE001 - absent, or the PyPI build that fails beside the CPU wheel
    def _needs_torchvision(*args, **kwargs):
        raise RuntimeError("torchvision is not installed: this converter needs it")

    _tv = types.ModuleType("torchvision")
    _ops = types.ModuleType("torchvision.ops")
    _ops.nms = _ops.roi_align = _ops.box_convert = _needs_torchvision
    _tv.ops = _ops
    sys.modules["torchvision"] = _tv
    sys.modules["torchvision.ops"] = _ops

import onnx2torch  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402

from common import REPO, SHARED, cifar, imagenet_images, imagenet_split, machine, table  # noqa: E402

BUDGETS = (0.85, 0.70, 0.55, 0.40)
ITERATIVE_STEPS = 100
COLS = ["model", "scope", "criterion", "target MACs", "MACs kept", "params kept", "top-1",
        "Δ top-1 (pp)", "prune time (s)", "runs"]


def short(exc: BaseException) -> str:
    msg = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "\\|")
    return msg if len(msg) <= 300 else msg[:297] + "..."


def where(exc: BaseException) -> str:
    """The innermost frame of a traceback, as file:line in function."""
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return ""
    f = tb[-1]
    path = f.filename
    for marker in ("site-packages/",):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{f.lineno} in {f.name}"


def predict(model: torch.nn.Module, x: np.ndarray, batch: int) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            out.append(model(torch.from_numpy(x[i:i + batch])).numpy())
    return np.concatenate(out)


def top1(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    return float((predict(model, x, batch).argmax(-1) == y).mean())


def count(model: torch.nn.Module, example: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example)
    return float(macs), float(params)


class QuickMacs:
    """Conv/Linear MACs from the current weight shapes: only decides when to call the real
    counter (tp.utils.count_ops_and_params), whose numbers are the ones reported."""

    def __init__(self, model: torch.nn.Module, example: torch.Tensor):
        self.spatial: dict[str, int] = {}
        hooks = []
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Conv2d):
                hooks.append(m.register_forward_hook(
                    lambda mod, i, o, name=name: self.spatial.__setitem__(name, o.shape[-1] * o.shape[-2])))
        with torch.no_grad():
            model(example)
        for h in hooks:
            h.remove()
        self.dense = self(model)

    def __call__(self, model: torch.nn.Module) -> float:
        total = 0.0
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Conv2d):
                total += m.weight.numel() * self.spatial[name]
            elif isinstance(m, torch.nn.Linear):
                total += m.weight.numel()
        return total


def convert(path: Path, check_x: np.ndarray) -> tuple[torch.nn.Module, float]:
    model = onnx2torch.convert(str(path)).eval()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: check_x})[0]
    out = predict(model, check_x, len(check_x))
    return model, float(np.abs(out - ref).max())


def taylor_gradients(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch: int) -> None:
    model.zero_grad()
    n = len(x)
    for i in range(0, n, batch):
        logits = model(torch.from_numpy(x[i:i + batch]))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y[i:i + batch]), reduction="sum") / n
        loss.backward()


def run_setting(spec: dict, dense: torch.nn.Module, scope: str, criterion: str, dense_acc: float,
                dense_macs: float, dense_params: float) -> list[dict]:
    """Prune one copy of the dense model through all budgets; one row per budget."""
    rows = []
    base = {"model": spec["label"], "scope": scope, "criterion": criterion}
    example = torch.from_numpy(spec["x_eval"][:1])
    torch.manual_seed(0)
    model = copy.deepcopy(dense)
    ignored = spec["ignored"](model, scope)
    quick = QuickMacs(model, example)
    importance = {"l1": lambda: tp.importance.MagnitudeImportance(p=1),
                  "taylor": lambda: tp.importance.TaylorImportance(),
                  "random": lambda: tp.importance.RandomImportance()}[criterion]()

    def fail_rows(stage: str, exc: BaseException, from_budget: int, kept: str = "", params: str = "") -> None:
        note = f"no: {stage} failed: {short(exc)} (at {where(exc)})"
        print(f"    {stage} FAILED: {short(exc)}\n      at {where(exc)}", flush=True)
        targets = ", ".join(f"≤{b:.0%}" for b in BUDGETS[from_budget:])
        rows.append({**base, "target MACs": targets, "MACs kept": kept, "params kept": params,
                     "top-1": "", "Δ top-1 (pp)": "", "prune time (s)": f"{t_prune:.1f}", "runs": note})

    t_prune = 0.0
    t0 = time.perf_counter()
    try:
        if criterion == "taylor":
            taylor_gradients(model, spec["x_grad"], spec["y_grad"], spec["grad_batch"])
        pruner = tp.pruner.MetaPruner(model, example, importance=importance, global_pruning=True,
                                      pruning_ratio=1.0, iterative_steps=ITERATIVE_STEPS,
                                      ignored_layers=ignored)
    except Exception as exc:  # noqa: BLE001 - a failure is a result
        t_prune += time.perf_counter() - t0
        fail_rows("dependency graph / gradients", exc, 0)
        return rows
    t_prune += time.perf_counter() - t0

    b_idx = 0
    macs, params = dense_macs, dense_params
    while b_idx < len(BUDGETS) and pruner.current_step < ITERATIVE_STEPS:
        t0 = time.perf_counter()
        try:
            pruner.step()
        except Exception as exc:  # noqa: BLE001
            t_prune += time.perf_counter() - t0
            fail_rows(f"pruner.step() {pruner.current_step}", exc, b_idx,
                      f"{macs / dense_macs:.1%} before the step", f"{params / dense_params:.1%}")
            return rows
        try:  # does the pruned model still run? (count_ops_and_params runs it too)
            with torch.no_grad():
                model(torch.from_numpy(spec["x_eval"][:2]))
        except Exception as exc:  # noqa: BLE001
            t_prune += time.perf_counter() - t0
            fail_rows(f"running the model pruned at step {pruner.current_step}", exc, b_idx,
                      f"{quick(model) / quick.dense:.1%} (conv/linear weights)")
            return rows
        if quick(model) / quick.dense > BUDGETS[b_idx] + 0.01:
            t_prune += time.perf_counter() - t0
            continue
        macs, params = count(model, example)
        t_prune += time.perf_counter() - t0
        while b_idx < len(BUDGETS) and macs / dense_macs <= BUDGETS[b_idx]:
            acc = top1(model, spec["x_eval"], spec["y_eval"], spec["eval_batch"])
            rows.append({**base, "target MACs": f"≤{BUDGETS[b_idx]:.0%}", "MACs kept": f"{macs / dense_macs:.1%}",
                         "params kept": f"{params / dense_params:.1%}", "top-1": f"{acc:.1%}",
                         "Δ top-1 (pp)": f"{100 * (acc - dense_acc):+.1f}", "prune time (s)": f"{t_prune:.1f}",
                         "runs": f"yes (step {pruner.current_step})"})
            print("   ", rows[-1], flush=True)
            b_idx += 1
    for b in BUDGETS[b_idx:]:
        rows.append({**base, "target MACs": f"≤{b:.0%}", "MACs kept": f"{macs / dense_macs:.1%} (lowest reached)",
                     "params kept": f"{params / dense_params:.1%}", "top-1": "", "Δ top-1 (pp)": "",
                     "prune time (s)": f"{t_prune:.1f}",
                     "runs": f"budget not met after {pruner.current_step} steps"})
    return rows


def resnet_ignored(model: torch.nn.Module, scope: str) -> list:
    ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if scope == "internal":
        ignored += [m for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Conv2d) and (n == "conv1/Conv" or "/conv2/" in n)]
    return ignored


def effnet_ignored(model: torch.nn.Module, scope: str) -> list:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def model_specs(names: list[str]) -> list[dict]:
    specs = []
    if "resnet56" in names:
        x_cal, y_cal = cifar("calib", 256)
        x_dev, y_dev = cifar("dev")
        specs.append({"label": "ResNet-56", "path": SHARED / "models" / "resnet56_cifar10.onnx",
                      "x_grad": x_cal, "y_grad": y_cal, "grad_batch": 128, "x_eval": x_dev, "y_eval": y_dev,
                      "eval_batch": 500, "scopes": ("internal", "whole"), "ignored": resnet_ignored,
                      "data": "CIFAR-10: Taylor gradients on 256 calibration images, top-1 on 5,000 dev images"})
    if "efficientnet" in names:
        cal_files, cal_labels, ev_files, ev_labels = imagenet_split()
        specs.append({"label": "EfficientNet-Lite0", "path": SHARED / "models" / "efficientnet_lite0.onnx",
                      "x_grad": imagenet_images(cal_files[:64]), "y_grad": cal_labels[:64], "grad_batch": 32,
                      "x_eval": imagenet_images(ev_files), "y_eval": ev_labels, "eval_batch": 50,
                      "scopes": ("whole",), "ignored": effnet_ignored,
                      "data": "ImageNet sample: Taylor gradients on the first 64 calibration files, "
                              "top-1 on the other 250 files"})
    return specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet56", "efficientnet"], choices=["resnet56", "efficientnet"])
    ap.add_argument("--criteria", nargs="+", default=["l1", "taylor", "random"], choices=["l1", "taylor", "random"])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS_peer.md")
    args = ap.parse_args()
    torch.set_num_threads(2)
    args.load_start = os.getloadavg()[0]
    t_start = time.perf_counter()
    rows, notes = [], []
    for spec in model_specs(args.models):
        print(f"== {spec['label']}", flush=True)
        try:
            dense, diff = convert(spec["path"], spec["x_eval"][:8])
        except Exception as exc:  # noqa: BLE001
            print(f"  onnx2torch conversion FAILED: {short(exc)}", flush=True)
            notes.append(f"{spec['label']}: onnx2torch conversion failed: {short(exc)} (at {where(exc)})")
            continue
        dense_acc = top1(dense, spec["x_eval"], spec["y_eval"], spec["eval_batch"])
        dense_macs, dense_params = count(dense, torch.from_numpy(spec["x_eval"][:1]))
        print(f"  onnx2torch vs onnxruntime, 8 eval images: max |diff| of logits {diff:.2e}; "
              f"dense top-1 (torch) {dense_acc:.1%}; MACs {dense_macs / 1e6:.1f} M", flush=True)
        notes.append(f"{spec['label']}: onnx2torch output vs onnxruntime on 8 evaluation images: max |Δlogit| = "
                     f"{diff:.1e}; dense MACs (tp.utils.count_ops_and_params) {dense_macs / 1e6:.1f} M, "
                     f"params {dense_params / 1e6:.3f} M. {spec['data']}.")
        rows.append({"model": spec["label"], "scope": "dense", "criterion": "-", "target MACs": "100%",
                     "MACs kept": "100.0%", "params kept": "100.0%", "top-1": f"{dense_acc:.1%}",
                     "Δ top-1 (pp)": "+0.0", "prune time (s)": "-", "runs": "yes"})
        for scope in spec["scopes"]:
            for criterion in args.criteria:
                print(f"  -- scope {scope}, criterion {criterion}", flush=True)
                rows += run_setting(spec, dense, scope, criterion, dense_acc, dense_macs, dense_params)
    total = time.perf_counter() - t_start
    write(args, rows, notes, total)
    print(f"total {total:.0f} s; wrote {args.out}", flush=True)


def write(args, rows: list[dict], notes: list[str], total: float) -> None:
    cmd = " ".join(["/tmp/benchvenv/bin/python", "benchmarks/peer_torch_pruning.py"] + sys.argv[1:])
    tp_version = importlib.metadata.version("torch-pruning")
    busy = max(args.load_start, os.getloadavg()[0]) > 2.5
    text = [
        "## Peer: Torch-Pruning, no fine-tuning\n",
        f"Machine: {machine()}. Date: {date.today().isoformat()}. torch {torch.__version__}, torch-pruning "
        f"{tp_version} (its `tp.__version__` says {getattr(tp, '__version__', '?')}), onnx2torch "
        f"{importlib.metadata.version('onnx2torch')}. Command: `{cmd}`. Total run time {total / 60:.1f} min "
        f"(1-minute load average {args.load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
        f"{': other jobs shared the 2 cores, so times are upper bounds' if busy else ''}).\n",
        "Models converted from the shared ONNX files with onnx2torch; Torch-Pruning `MetaPruner`, "
        f"global ranking, `pruning_ratio=1.0`, `iterative_steps={ITERATIVE_STEPS}`, stepping until "
        "`tp.utils.count_ops_and_params` MACs ≤ the target; each budget continues from the model of the "
        "previous one. Top-1 of the pruned PyTorch model as it is (no fine-tuning). Prune time: pruning "
        "only (graph, gradients, steps, MAC counts), cumulative over the budgets, evaluation excluded; for a "
        "failed run, the time until it failed. "
        "L1 = `MagnitudeImportance(p=1)`, Taylor = `TaylorImportance()` with cross-entropy gradients computed "
        "once on the dense model, random = `RandomImportance()` (seed 0). Scope *internal*: stem, second conv "
        "of every block and classifier in `ignored_layers`; *whole*: only the classifier ignored.\n",
        table(rows, COLS),
    ]
    if notes:
        text.append("\n".join(f"* {n}" for n in notes) + "\n")
    args.out.write_text("\n".join(text))


if __name__ == "__main__":
    main()
