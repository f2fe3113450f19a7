"""Tiny models built in code, one per channel pattern the analysis must handle."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Builder:
    """Append nodes with random weights; ``build()`` returns a checked ModelProto."""

    def __init__(self, shape=(None, 3, 8, 8), seed: int = 0, opset: int = 17, const_nodes: bool = False):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.n = 0
        self.opset = opset
        self.const_nodes = const_nodes
        dims = ["N" if d is None else d for d in shape]
        self.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)]
        self.outputs: list = []

    def name(self, p: str) -> str:
        self.n += 1
        return f"{p}{self.n}"

    def const(self, arr: np.ndarray, p: str = "w") -> str:
        nm = self.name(p)
        arr = np.asarray(arr)
        if self.const_nodes:
            self.nodes.append(helper.make_node("Constant", [], [nm], name=nm + "_c",
                                               value=numpy_helper.from_array(arr, nm)))
        else:
            self.inits.append(numpy_helper.from_array(arr, nm))
        return nm

    def op(self, op: str, inputs, n_out: int = 1, **attrs):
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.name(op + "_"), **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, bias: bool = True, stride: int = 1):
        w = self.const((self.rng.standard_normal((cout, cin // group, k, k)) * 0.3).astype(np.float32))
        ins = [x, w]
        if bias:
            ins.append(self.const(self.rng.standard_normal(cout).astype(np.float32) * 0.1, "b"))
        return self.op("Conv", ins, kernel_shape=[k, k], pads=[k // 2] * 4, group=group, strides=[stride, stride])

    def bn(self, x: str, c: int):
        r = self.rng
        ins = [x, self.const(r.uniform(0.5, 1.5, c).astype(np.float32), "g"),
               self.const(r.standard_normal(c).astype(np.float32) * 0.1, "beta"),
               self.const(r.standard_normal(c).astype(np.float32) * 0.1, "mu"),
               self.const(r.uniform(0.5, 1.5, c).astype(np.float32), "var")]
        return self.op("BatchNormalization", ins)

    def gemm(self, x: str, fin: int, fout: int, trans_b: bool = True):
        shape = (fout, fin) if trans_b else (fin, fout)
        w = self.const((self.rng.standard_normal(shape) * 0.1).astype(np.float32))
        b = self.const(self.rng.standard_normal(fout).astype(np.float32) * 0.1, "b")
        return self.op("Gemm", [x, w, b], transB=int(trans_b))

    def output(self, t: str, rank: int | None = 4):
        """Graph output with symbolic dims (shape inference fills them)."""
        dims = [f"{t}_d{i}" for i in range(rank or 4)]
        self.outputs.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, dims))

    def build(self) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "tiny", self.inputs, self.outputs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def chain_flatten_gemm() -> onnx.ModelProto:
    """x -> Conv -> BN -> Relu -> Conv -> Relu -> MaxPool -> Flatten -> Gemm"""
    b = Builder()
    h = b.op("Relu", [b.bn(b.conv("x", 3, 8), 8)])
    h = b.op("Relu", [b.conv(h, 8, 6)])
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("Flatten", [h], axis=1)
    b.output(b.gemm(h, 6 * 16, 5), 2)
    return b.build()


def option_a_shortcut() -> onnx.ModelProto:
    """ResNet option A: stream(8) -> [conv s2 -> conv(16)] + Pad(channel, 4|4)(Slice ::2) -> Add -> conv"""
    b = Builder()
    s = b.op("Relu", [b.conv("x", 3, 8)])
    h = b.op("Relu", [b.conv(s, 8, 8)])
    s = b.op("Relu", [b.op("Add", [b.conv(h, 8, 8), s])])
    m = b.op("Relu", [b.conv(s, 8, 16, stride=2)])
    m = b.conv(m, 16, 16)
    sl = b.op("Slice", [s, b.const(np.array([0, 0], np.int64)), b.const(np.array([2 ** 62, 2 ** 62], np.int64)),
                        b.const(np.array([2, 3], np.int64)), b.const(np.array([2, 2], np.int64))])
    pad = b.op("Pad", [sl, b.const(np.array([0, 4, 0, 0, 0, 4, 0, 0], np.int64)), b.const(np.array(0, np.float32))],
               mode="constant")
    s2 = b.op("Relu", [b.op("Add", [m, pad])])
    h = b.op("GlobalAveragePool", [s2])
    h = b.op("Flatten", [h])
    b.output(b.gemm(h, 16, 4), 2)
    return b.build()


def se_block(const_nodes: bool = False) -> onnx.ModelProto:
    """Conv(12) -> Relu -> SE[GAP -> Conv(4) -> Relu -> Conv(12) -> HardSigmoid] * x -> Conv(6)"""
    b = Builder(const_nodes=const_nodes)
    x = b.op("Relu", [b.conv("x", 3, 12)])
    g = b.op("GlobalAveragePool", [x])
    g = b.op("Relu", [b.conv(g, 12, 4, k=1)])
    g = b.op("HardSigmoid", [b.conv(g, 4, 12, k=1)], alpha=0.2, beta=0.5)
    y = b.op("Mul", [x, g])
    b.output(b.conv(y, 12, 6, k=1), 4)
    return b.build()


def conv_add_bias_hardswish() -> onnx.ModelProto:
    """Paddle style: Conv(no bias) + reshaped const, written-out hard-swish x*Clip(x+3,0,6)/6, Mul by scalar."""
    b = Builder(const_nodes=True)
    c = b.conv("x", 3, 10, bias=False)
    c = b.op("Add", [c, b.const(b.rng.standard_normal((1, 10, 1, 1)).astype(np.float32))])
    t = b.op("Add", [c, b.const(np.array(3.0, np.float32))])
    t = b.op("Clip", [t, b.const(np.array(0.0, np.float32)), b.const(np.array(6.0, np.float32))])
    h = b.op("Div", [b.op("Mul", [c, t]), b.const(np.array(6.0, np.float32))])
    h = b.op("Mul", [h, b.const(np.array(0.5, np.float32))])
    b.output(b.conv(h, 10, 4, k=1), 4)
    return b.build()


def inverted_residual() -> onnx.ModelProto:
    """stream(8) -> expand 1x1 (24) -> Clip -> depthwise 3x3 -> Clip -> project 1x1 (8) -> Add stream"""
    b = Builder()
    s = b.conv("x", 3, 8)
    e = b.op("Clip", [b.conv(s, 8, 24, k=1), b.const(np.array(0.0, np.float32)), b.const(np.array(6.0, np.float32))])
    d = b.op("Clip", [b.conv(e, 24, 24, k=3, group=24), b.const(np.array(0.0, np.float32)),
                      b.const(np.array(6.0, np.float32))])
    p = b.conv(d, 24, 8, k=1)
    s2 = b.op("Add", [p, s])
    b.output(b.conv(s2, 8, 5, k=1), 4)
    return b.build()


def grouped_concat_split() -> onnx.ModelProto:
    """Conv(8) | Conv(4) -> Concat(12) -> grouped Conv(g=3, 12) -> Split(4,8) -> Conv each -> Add"""
    b = Builder()
    a = b.op("Relu", [b.conv("x", 3, 8)])
    c = b.op("Relu", [b.conv("x", 3, 4)])
    cat = b.op("Concat", [a, c], axis=1)
    g = b.op("Relu", [b.conv(cat, 12, 12, group=3)])
    s1, s2 = b.op("Split", [g, b.const(np.array([4, 8], np.int64))], n_out=2, axis=1)
    y = b.op("Add", [b.conv(s1, 4, 5, k=1), b.conv(s2, 8, 5, k=1)])
    b.output(y, 4)
    return b.build()


def convtranspose_resize() -> onnx.ModelProto:
    """Conv(8) -> ConvTranspose(6, x2) -> Relu -> Resize(x2) -> Conv(3)"""
    b = Builder()
    h = b.op("Relu", [b.conv("x", 3, 8)])
    w = b.const((b.rng.standard_normal((8, 6, 2, 2)) * 0.3).astype(np.float32))
    h = b.op("Relu", [b.op("ConvTranspose", [h, w, b.const(np.zeros(6, np.float32))], kernel_shape=[2, 2], strides=[2, 2])])
    h = b.op("Resize", [h, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    b.output(b.conv(h, 6, 3, k=1), 4)
    return b.build()


def transpose_reshape_gemm_prelu() -> onnx.ModelProto:
    """MTCNN style: Conv(6) -> PRelu -> Transpose(0,3,2,1) -> Reshape(-1, 6*8*8) -> Gemm(16) -> PRelu -> Gemm(3)"""
    b = Builder()
    h = b.conv("x", 3, 6)
    h = b.op("PRelu", [h, b.const(b.rng.uniform(0, 0.5, (6, 1, 1)).astype(np.float32))])
    h = b.op("Transpose", [h], perm=[0, 3, 2, 1])
    h = b.op("Reshape", [h, b.const(np.array([-1, 6 * 64], np.int64))])
    h = b.gemm(h, 6 * 64, 16)
    h = b.op("PRelu", [h, b.const(b.rng.uniform(0, 0.5, (16,)).astype(np.float32))])
    b.output(b.gemm(h, 16, 3), 2)
    return b.build()


def gap_reshape_matmul() -> onnx.ModelProto:
    """Conv(10) -> GAP -> Reshape([0,-1]) -> MatMul(10x7) -> Add bias -> Relu -> MatMul(7x2)"""
    b = Builder()
    h = b.op("Relu", [b.conv("x", 3, 10)])
    h = b.op("GlobalAveragePool", [h])
    h = b.op("Reshape", [h, b.const(np.array([0, -1], np.int64))])
    h = b.op("MatMul", [h, b.const(b.rng.standard_normal((10, 7)).astype(np.float32))])
    h = b.op("Relu", [b.op("Add", [h, b.const(b.rng.standard_normal(7).astype(np.float32))])])
    b.output(b.op("MatMul", [h, b.const(b.rng.standard_normal((7, 2)).astype(np.float32))]), 2)
    return b.build()


def softmax_over_channels() -> onnx.ModelProto:
    """Conv(5) -> Softmax(axis=1) -> Conv(3): the first conv must be frozen."""
    b = Builder()
    h = b.op("Softmax", [b.conv("x", 3, 5)], axis=1)
    b.output(b.conv(h, 5, 3, k=1), 4)
    return b.build()


def unknown_op() -> onnx.ModelProto:
    """Conv(5) -> LRN (mixes channels, not in the registry) -> Conv(3): frozen."""
    b = Builder()
    h = b.op("LRN", [b.conv("x", 3, 5)], size=3)
    b.output(b.conv(h, 5, 3, k=1), 4)
    return b.build()


def level_heads(batch=None) -> onnx.ModelProto:
    """A two-level detector: per level a class head (3) and a box head (4), each its own graph output.

    Level 1 works on the trunk (8 channels), level 2 on a stride-2 deeper trunk
    (16 channels), so level 2's heads start after level 1's outputs are
    computed: a suffix cut inside level 2 does not reach them. ``batch``
    fixes the batch dim (None: symbolic 'N').
    """
    b = Builder(shape=(batch, 3, 8, 8))
    t1 = b.op("Relu", [b.conv("x", 3, 8)])
    t2 = b.op("Relu", [b.conv(b.op("Relu", [b.conv(t1, 8, 16, stride=2)]), 16, 16)])
    for t, c in ((t1, 8), (t2, 16)):
        for out in (3, 4):
            b.output(b.conv(b.op("Relu", [b.conv(t, c, 8)]), 8, out, k=1), 4)
    return b.build()


PATTERNS = {
    "chain_flatten_gemm": chain_flatten_gemm,
    "option_a_shortcut": option_a_shortcut,
    "se_block": se_block,
    "se_block_constant_nodes": lambda: se_block(const_nodes=True),
    "conv_add_bias_hardswish": conv_add_bias_hardswish,
    "inverted_residual": inverted_residual,
    "grouped_concat_split": grouped_concat_split,
    "convtranspose_resize": convtranspose_resize,
    "transpose_reshape_gemm_prelu": transpose_reshape_gemm_prelu,
    "gap_reshape_matmul": gap_reshape_matmul,
}


def residual_net(bias: bool = True, bn: bool = True, broadcast_block: bool = False):
    """stream: Conv(3->8) -> Relu -> 2 x [Conv(8->6) -> BN -> Relu -> Conv(6->8) -> BN -> Add(., s) -> Relu]
    -> GAP -> Flatten -> Gemm(8->4). ``broadcast_block``: a third block adds GAP(s) [N,8,1,1] to its branch."""
    b = Builder()
    s = b.op("Relu", [b.conv("x", 3, 8)])
    for _ in range(2):
        h = b.conv(s, 8, 6, bias=bias)
        h = b.op("Relu", [b.bn(h, 6) if bn else h])
        h = b.conv(h, 6, 8, bias=bias)
        h = b.bn(h, 8) if bn else h
        s = b.op("Relu", [b.op("Add", [h, s])])
    if broadcast_block:
        h = b.op("Relu", [b.conv(s, 8, 5)])
        h = b.conv(h, 5, 8)
        s = b.op("Add", [h, b.op("GlobalAveragePool", [s])])
    h = b.op("Flatten", [b.op("GlobalAveragePool", [s])])
    b.output(b.gemm(h, 8, 4), 2)
    return b.build()
