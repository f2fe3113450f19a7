"""Seeded random graphs over every channel pattern onnxprune supports and many it must refuse.

``random_model(seed)`` draws a small NCHW network: a chain of blocks, each
picked from the supported patterns (conv chains, BN, residual Adds, depthwise
and grouped convs, Concat/Split, SE gates, Pad, Resize, ConvTranspose,
pooling, multi-head attention over the positions) and from patterns the
analysis must freeze (ops it does not know, odd broadcasts, channel
reshapes, channel-mixing ops, near-miss attention), then a head (graph
output, Flatten/Reshape/Transpose into Gemm or MatMul). ``check_model``
prepares it and prunes it at random plans, and returns what happened:
verified exact, frozen with a reason, our own error, or a crash. The test
suite runs ~100 seeds; ``benchmarks/fuzz.py`` runs thousands.
"""

from __future__ import annotations

import re
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx
from onnx import helper

from builders import Builder
from fuzz_attention import attention, odd_attention


@dataclass
class T:
    """An activation: name, channels, height, width (batch N, NCHW)."""

    name: str
    c: int
    h: int
    w: int


class Gen:
    """Random blocks on top of a Builder; ``pool`` holds earlier activations for skips and joins."""

    def __init__(self, seed: int) -> None:
        self.r = np.random.default_rng(seed)
        c, h, w = int(self.pick([1, 3, 4])), int(self.pick([5, 7, 8])), int(self.pick([6, 8]))
        self.b = Builder(shape=(None, c, h, w), seed=seed, const_nodes=bool(self.r.random() < 0.2))
        self.pool: list[T] = [T("x", c, h, w)]
        self.used: list[str] = []

    def pick(self, xs):
        return xs[int(self.r.integers(len(xs)))]

    def width(self) -> int:
        return int(self.pick([2, 3, 4, 5, 6, 8, 12]))

    def act(self, t: T) -> T:
        b, r = self.b, self.r
        kind = self.pick(["Relu", "Sigmoid", "Clip", "HardSwish", "LeakyRelu", "Tanh", "none", "PRelu"])
        if kind == "none":
            return t
        if kind == "Clip":
            n = b.op("Clip", [t.name, b.const(np.array(0.0, np.float32)), b.const(np.array(6.0, np.float32))])
        elif kind == "PRelu":
            n = b.op("PRelu", [t.name, b.const(r.uniform(0, 0.5, (t.c, 1, 1)).astype(np.float32))])
        else:
            n = b.op(kind, [t.name])
        return T(n, t.c, t.h, t.w)

    # ------------------------------------------------------------ supported blocks
    def conv(self, t: T, cout: Optional[int] = None, k: Optional[int] = None, group: int = 1, bn=None,
             keep_size: bool = False) -> T:
        b, r = self.b, self.r
        cout = cout or self.width()
        k = k or int(self.pick([1, 3]))
        stride = 2 if t.h >= 4 and not keep_size and r.random() < 0.2 else 1
        y = b.conv(t.name, t.c, cout, k=k, group=group, bias=bool(r.random() < 0.7), stride=stride)
        h, w = (t.h + stride - 1) // stride, (t.w + stride - 1) // stride
        out = T(y, cout, h, w)
        if bn if bn is not None else r.random() < 0.4:
            out = T(b.bn(y, cout), cout, h, w)
        return self.act(out)

    def depthwise(self, t: T) -> T:
        return self.conv(t, t.c, 3, group=t.c)

    def grouped(self, t: T) -> T:
        groups = [g for g in (2, 3, 4) if t.c % g == 0]
        if not groups:
            return self.conv(t)
        g = int(self.pick(groups))
        return self.conv(t, g * int(self.pick([1, 2, 3])), 3, group=g)

    def residual(self, t: T) -> T:
        same = [p for p in self.pool if (p.c, p.h, p.w) == (t.c, t.h, t.w) and p.name not in ("x", t.name)]
        other = self.pick(same) if same else self.conv(t, t.c, keep_size=True)
        return self.act(T(self.b.op("Add", [t.name, other.name] if self.r.random() < 0.5 else [other.name, t.name]),
                          t.c, t.h, t.w))

    def concat(self, t: T) -> T:
        same = [p for p in self.pool if (p.h, p.w) == (t.h, t.w) and p.name not in ("x", t.name)]
        other = self.pick(same) if same else self.conv(t, keep_size=True)
        return T(self.b.op("Concat", [t.name, other.name], axis=1), t.c + other.c, t.h, t.w)

    def split(self, t: T) -> T:
        if t.c < 2:
            return self.conv(t)
        first = int(self.r.integers(1, t.c))
        a, c = self.b.op("Split", [t.name, self.b.const(np.array([first, t.c - first], np.int64))], n_out=2, axis=1)
        left, right = self.conv(T(a, first, t.h, t.w)), self.conv(T(c, t.c - first, t.h, t.w))
        if left.h == right.h and left.c == right.c and self.r.random() < 0.5:
            return T(self.b.op("Add", [left.name, right.name]), left.c, left.h, left.w)
        if left.h != right.h:
            return left
        return T(self.b.op("Concat", [left.name, right.name], axis=1), left.c + right.c, left.h, left.w)

    def se(self, t: T) -> T:
        b = self.b
        g = b.op("GlobalAveragePool", [t.name])
        g = b.op("Relu", [b.conv(g, t.c, max(1, t.c // 2), k=1)])
        g = b.op(self.pick(["Sigmoid", "HardSigmoid"]), [b.conv(g, max(1, t.c // 2), t.c, k=1)])
        return T(b.op("Mul", [t.name, g] if self.r.random() < 0.5 else [g, t.name]), t.c, t.h, t.w)

    def pad(self, t: T) -> T:
        b, r = self.b, self.r
        if r.random() < 0.5:  # spatial pad
            mode = self.pick(["constant", "reflect", "edge"] if min(t.h, t.w) >= 2 else ["constant", "edge"])
            p = b.op("Pad", [t.name, b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], mode=mode)
            return T(p, t.c, t.h + 2, t.w + 2)
        lo, hi = int(r.integers(0, 3)), int(r.integers(0, 3))  # zero channels (ResNet option A)
        p = b.op("Pad", [t.name, b.const(np.array([0, lo, 0, 0, 0, hi, 0, 0], np.int64)),
                         b.const(np.array(0, np.float32))], mode="constant")
        return self.conv(T(p, t.c + lo + hi, t.h, t.w))

    def resize(self, t: T) -> T:
        if t.h > 8:
            return self.pool_(t)
        b = self.b
        y = b.op("Resize", [t.name, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
        return T(y, t.c, t.h * 2, t.w * 2)

    def deconv(self, t: T) -> T:
        if t.h > 8:
            return self.conv(t)
        b, cout = self.b, self.width()
        w = b.const((b.rng.standard_normal((t.c, cout, 2, 2)) * 0.3).astype(np.float32))
        y = b.op("ConvTranspose", [t.name, w, b.const(np.zeros(cout, np.float32))], kernel_shape=[2, 2], strides=[2, 2])
        return self.act(T(y, cout, t.h * 2, t.w * 2))

    def pool_(self, t: T) -> T:
        if t.h < 2:
            return self.conv(t)
        op = self.pick(["MaxPool", "AveragePool"])
        return T(self.b.op(op, [t.name], kernel_shape=[2, 2], strides=[2, 2]), t.c, t.h // 2, t.w // 2)

    def slice_(self, t: T) -> T:
        """Channel slice: a contiguous range of the channels goes on."""
        if t.c < 2:
            return self.conv(t)
        b = self.b
        lo = int(self.r.integers(0, t.c - 1))
        hi = int(self.r.integers(lo + 1, t.c + 1))
        y = b.op("Slice", [t.name, b.const(np.array([lo], np.int64)), b.const(np.array([hi], np.int64)),
                           b.const(np.array([1], np.int64))])
        return T(y, hi - lo, t.h, t.w)

    def fanout(self, t: T) -> T:
        """One tensor read by two convs whose results are joined (add or concat)."""
        cout = self.width()
        left, right = self.conv(t, cout, keep_size=True), self.conv(t, cout, keep_size=True)
        if self.r.random() < 0.5:
            return T(self.b.op(self.pick(["Add", "Mul", "Max"]), [left.name, right.name]), cout, t.h, t.w)
        return T(self.b.op("Concat", [left.name, right.name], axis=1), 2 * cout, t.h, t.w)

    def gate(self, t: T) -> T:
        """x * f(conv(x)) and x / (|conv(x)| + 1): activations combined channel by channel."""
        b = self.b
        y = self.conv(t, t.c, keep_size=True)
        if self.r.random() < 0.5:
            return T(b.op("Mul", [t.name, b.op("Sigmoid", [y.name])]), t.c, t.h, t.w)
        den = b.op("Add", [b.op("Abs", [y.name]), b.const(np.array(1.0, np.float32))])
        return T(b.op("Div", [t.name, den]), t.c, t.h, t.w)

    def sum3(self, t: T) -> T:
        a, c = self.conv(t, t.c, keep_size=True), self.conv(t, t.c, keep_size=True)
        return T(self.b.op(self.pick(["Sum", "Mean", "Max", "Min"]), [t.name, a.name, c.name]), t.c, t.h, t.w)

    def bias_add(self, t: T) -> T:
        """Paddle style: Conv without bias, then Add of a (1, C, 1, 1) constant."""
        b, cout = self.b, self.width()
        y = b.conv(t.name, t.c, cout, k=1, bias=False)
        y = b.op("Add", [y, b.const(self.r.standard_normal((1, cout, 1, 1)).astype(np.float32))])
        return self.act(T(y, cout, t.h, t.w))

    def shared_weight(self, t: T) -> T:
        """Two convs reading the same weight initializer (one kernel, two layers)."""
        b = self.b
        w = b.const((self.r.standard_normal((t.c, t.c, 1, 1)) * 0.3).astype(np.float32))
        y = b.op("Conv", [t.name, w], kernel_shape=[1, 1])
        y = b.op("Relu", [y])
        return T(b.op("Conv", [y, w], kernel_shape=[1, 1]), t.c, t.h, t.w)

    def extra_output(self, t: T) -> T:
        """An intermediate tensor is also a graph output: its channels must stay."""
        self.b.output(t.name, 4)
        return self.conv(t)

    def spatial_matmul(self, t: T) -> T:
        """MatMul over the width axis (NCHW @ [W, W]): channels pass through untouched."""
        w = self.b.const((self.r.standard_normal((t.w, t.w)) * 0.3).astype(np.float32))
        return T(self.b.op("MatMul", [t.name, w]), t.c, t.h, t.w)

    def unsqueeze(self, t: T) -> T:
        b = self.b
        y = b.op("Unsqueeze", [t.name, b.const(np.array([2], np.int64))])
        return T(b.op("Squeeze", [y, b.const(np.array([2], np.int64))]), t.c, t.h, t.w)

    def attention(self, t: T) -> T:
        """Multi-head self-attention over the positions (tests/fuzz_attention.py)."""
        return attention(self, t)

    # ------------------------------------------------------------ blocks the analysis must refuse (or prove)
    def odd_attention(self, t: T) -> T:
        return odd_attention(self, t)

    def tile(self, t: T) -> T:
        """Channels repeated (Tile) or strided (Slice step 2): coupling no rule maps."""
        b = self.b
        if self.r.random() < 0.5 or t.c < 2:
            return T(b.op("Tile", [t.name, b.const(np.array([1, 2, 1, 1], np.int64))]), 2 * t.c, t.h, t.w)
        y = b.op("Slice", [t.name, b.const(np.array([0], np.int64)), b.const(np.array([t.c], np.int64)),
                           b.const(np.array([1], np.int64)), b.const(np.array([2], np.int64))])
        return T(y, (t.c + 1) // 2, t.h, t.w)

    def unknown(self, t: T) -> T:
        b = self.b
        kind = self.pick(["LRN", "Softmax", "ReduceC", "InstanceNormalization", "CumSum", "Einsum", "Gather"])
        if kind == "LRN":
            y = b.op("LRN", [t.name], size=3)
        elif kind == "Softmax":
            y = b.op("Softmax", [t.name], axis=1)
        elif kind == "ReduceC":
            y = b.op("ReduceMean", [t.name, b.const(np.array([1], np.int64))], keepdims=1)
            return self.conv(T(y, 1, t.h, t.w))
        elif kind == "InstanceNormalization":
            y = b.op(kind, [t.name, b.const(np.ones(t.c, np.float32)), b.const(np.zeros(t.c, np.float32))])
        elif kind == "CumSum":
            y = b.op("CumSum", [t.name, b.const(np.array(1, np.int64))])
        elif kind == "Einsum":  # channel mixing written as an einsum: nothing the rules know
            m = b.const(self.r.standard_normal((t.c, t.c)).astype(np.float32))
            y = b.op("Einsum", [t.name, m], equation="nchw,cd->ndhw")
        else:  # gather channels in a permuted order
            idx = self.r.permutation(t.c).astype(np.int64)
            y = b.op("Gather", [t.name, b.const(idx)], axis=1)
        return T(y, t.c, t.h, t.w)

    def odd_broadcast(self, t: T) -> T:
        b, r = self.b, self.r
        kind = self.pick(["spatial", "scalar_tensor", "channel_const", "ncw", "runtime"])
        if kind == "spatial":
            c = b.const(r.standard_normal((1, 1, t.h, t.w)).astype(np.float32))
        elif kind == "scalar_tensor":
            c = b.const(r.standard_normal((1, 1, 1, 1)).astype(np.float32))
        elif kind == "channel_const":
            c = b.const(r.standard_normal((t.c, 1, 1)).astype(np.float32))
        elif kind == "ncw":
            c = b.const(r.standard_normal((1, t.c, 1, t.w)).astype(np.float32))
        else:  # a run-time per-sample scalar map computed from the tensor itself
            c = b.op("ReduceMax", [t.name, b.const(np.array([1], np.int64))], keepdims=1)
        return T(b.op(self.pick(["Mul", "Add", "Sub", "Div"]) if kind != "runtime" else "Sub", [t.name, c]),
                 t.c, t.h, t.w)

    def channel_reshape(self, t: T) -> T:
        b = self.b
        kind = self.pick(["shuffle", "d2s", "s2d", "transpose"])
        if kind == "shuffle" and t.c % 2 == 0:  # ShuffleNet channel shuffle
            y = b.op("Reshape", [t.name, b.const(np.array([-1, 2, t.c // 2, t.h * t.w], np.int64))])
            y = b.op("Transpose", [y], perm=[0, 2, 1, 3])
            y = b.op("Reshape", [y, b.const(np.array([-1, t.c, t.h, t.w], np.int64))])
            return T(y, t.c, t.h, t.w)
        if kind == "d2s" and t.c % 4 == 0:
            return T(b.op("DepthToSpace", [t.name], blocksize=2), t.c // 4, t.h * 2, t.w * 2)
        if kind == "s2d" and t.h % 2 == 0 and t.w % 2 == 0:
            return T(b.op("SpaceToDepth", [t.name], blocksize=2), t.c * 4, t.h // 2, t.w // 2)
        y = b.op("Transpose", [t.name], perm=[0, 1, 3, 2])  # spatial transpose: channels stay
        return T(y, t.c, t.w, t.h)

    # ------------------------------------------------------------ heads
    def head(self, t: T) -> None:
        b = self.b
        kind = self.pick(["out", "gap_gemm", "flatten_gemm", "reshape_gemm", "nhwc_matmul", "reduce_matmul",
                          "conv_out", "gemm_chain"])
        self.used.append("head:" + kind)
        if kind == "out":
            b.output(t.name, 4)
            return
        if kind == "conv_out":
            b.output(b.conv(t.name, t.c, 2, k=1), 4)
            return
        if kind == "gemm_chain":
            h = b.op("Flatten", [b.op("GlobalMaxPool", [t.name])], axis=1)
            h = b.op("Relu", [b.gemm(h, t.c, 6)])
            b.output(b.gemm(h, 6, 3), 2)
        elif kind == "gap_gemm":
            h = b.op("Flatten", [b.op("GlobalAveragePool", [t.name])], axis=1)
            b.output(b.gemm(h, t.c, 3), 2)
        elif kind == "flatten_gemm":
            b.output(b.gemm(b.op("Flatten", [t.name], axis=1), t.c * t.h * t.w, 3), 2)
        elif kind == "reshape_gemm":
            h = b.op("Reshape", [t.name, b.const(np.array([-1, t.c * t.h * t.w], np.int64))])
            b.output(b.gemm(h, t.c * t.h * t.w, 3, trans_b=bool(self.r.random() < 0.5)), 2)
        elif kind == "nhwc_matmul":
            h = b.op("Transpose", [t.name], perm=[0, 2, 3, 1])
            h = b.op("Reshape", [h, b.const(np.array([0, -1], np.int64))])
            w = b.const((self.r.standard_normal((t.c * t.h * t.w, 3)) * 0.1).astype(np.float32))
            b.output(b.op("MatMul", [h, w]), 2)
        else:
            h = b.op("ReduceMean", [t.name, b.const(np.array([2, 3], np.int64))], keepdims=0)
            w = b.const((self.r.standard_normal((t.c, 4)) * 0.1).astype(np.float32))
            b.output(b.op("MatMul", [h, w]), 2)


OPSET = 18  # ReduceMean/ReduceMax take their axes as an input
SUPPORTED = ("conv", "depthwise", "grouped", "residual", "concat", "split", "se", "pad", "resize", "deconv",
             "pool_", "slice_", "fanout", "gate", "sum3", "bias_add", "shared_weight", "extra_output",
             "spatial_matmul", "unsqueeze", "attention")
REFUSED = ("unknown", "odd_broadcast", "channel_reshape", "tile", "odd_attention")


def random_model(seed: int) -> tuple[onnx.ModelProto, list[str]]:
    """A random network and the blocks it was drawn from (supported ones about 4 in 5)."""
    g = Gen(seed)
    t = g.conv(g.pool[0])
    g.pool.append(t)
    for _ in range(int(g.r.integers(2, 7))):
        name = g.pick(SUPPORTED) if g.r.random() < 0.8 else g.pick(REFUSED)
        g.used.append(name)
        t = getattr(g, name)(t)
        g.pool.append(t)
    g.head(t)
    inputs = list(g.b.inputs)
    if g.r.random() < 0.1:  # old exporters list weights as graph inputs too (a caller may override them)
        g.used.append("weights_as_inputs")
        inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in g.b.inits]
    if g.r.random() < 0.1:
        g.used.append("unnamed_nodes")
        for n in g.b.nodes:
            n.name = ""
    m = helper.make_model(helper.make_graph(g.b.nodes, f"fuzz{seed}", inputs, g.b.outputs, g.b.inits),
                          opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    return m, g.used


# ---------------------------------------------------------------------- outcomes
@dataclass
class Outcome:
    seed: int
    blocks: list[str]
    kind: str = "verified"      # verified | all frozen | our error | broken | crash
    plans: int = 0
    frozen: Counter = field(default_factory=Counter)
    detail: str = ""


def reason_class(reason: str) -> str:
    """A freeze reason with names and numbers taken out, for counting."""
    text = re.sub(r"'[^']*'", "*", reason)
    text = re.sub(r"\(\d+(, \d+)*\)|\[[^\]]*\]", "#", text)
    return re.sub(r"\d+", "#", text)


def feasible(analysis, removed: list[int]) -> list[int]:
    """Drop units until every labelled tensor keeps at least one channel."""
    removed = list(removed)
    for name in analysis.labels:
        while removed:
            keep = analysis.keep_mask(name, np.array(removed, dtype=np.int64))
            if keep is None or keep.size == 0 or keep.any():
                break
            removed.pop()
    return removed


def check_model(seed: int, plans: int = 2, write_dir=None) -> Outcome:
    """Prepare and prune one random model at ``plans`` random plans; classify what happened.

    With ``write_dir``, the whole data-free path (selection at a random
    percentage, surgery, verification, atomic write) runs too, and the
    written file is read back and run. ``broken`` is a surgery that failed
    its own exactness check, a written model that does not run, or a
    frozen group without a reason (never acceptable); ``crash`` is any
    exception that is not an OnnxPruneError (never acceptable).
    """
    from onnxprune.pruning.api import build_pruned, prune_model
    from onnxprune.config import PruneConfig
    from onnxprune.runtime import make_session
    from onnxprune.errors import OnnxPruneError, VerificationError
    from onnxprune.pruning.prepare import prepare

    model, blocks = random_model(seed)
    out = Outcome(seed, blocks)
    try:
        onnx.checker.check_model(model)
        p = prepare(model)
        a = p.analysis
        for g in a.groups:
            if g.frozen:
                if not g.frozen_reason.strip():
                    out.kind, out.detail = "broken", f"group {g.id} frozen without a reason"
                    return out
                out.frozen[reason_class(g.frozen_reason)] += 1
        units = a.prunable_units
        if not units:
            out.kind = "all frozen"
            return out
        rng = np.random.default_rng(seed)
        for _ in range(plans):
            k = int(rng.integers(1, len(units) + 1))
            chosen = [int(u) for u in rng.choice(units, size=k, replace=False)]
            removed = feasible(a, chosen)
            feeds = [{n: rng.uniform(-1, 1, s).astype(np.float32) for n, s in p.with_batch(3).items()}]
            pruned, ver = build_pruned(p, removed, extra_feeds=feeds)
            if ver is None:
                raise AssertionError("no verification result")
            out.plans += 1
        if write_dir is not None:
            path = f"{write_dir}/fuzz{seed}.onnx"
            pct = float(rng.choice([10, 30, 50, 80]))
            res = prune_model(model, path, config=PruneConfig(criterion="l1", percentage=pct, measure=False,
                                                              round_to=int(rng.choice([1, 2]))))
            written = onnx.load(path)
            got = make_session(written).run(None, feeds[0] if units else {})
            if len(got) != len(model.graph.output) or res.output_path is None:
                out.kind, out.detail = "broken", "written model does not run like the original"
                return out
    except VerificationError as exc:
        out.kind, out.detail = "broken", str(exc)
    except OnnxPruneError as exc:
        out.kind, out.detail = "our error", f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a crash is what the fuzzer looks for
        out.kind = "crash"
        out.detail = f"{type(exc).__name__}: {exc}\n" + traceback.format_exc(limit=-4)
    return out
