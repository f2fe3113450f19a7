"""Tiny transformer encoder blocks built in code: decomposed attention in the forms exporters write, fused ops."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from builders import Builder


def _i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


class Encoder:
    """One pre-LayerNorm encoder block on x (N, T, D): attention + MLP, each in a residual."""

    def __init__(self, T: int = 6, D: int = 16, H: int = 4, seed: int = 0, opset: int = 17,
                 batch: int | None = None) -> None:
        self.T, self.D, self.H, self.hd = T, D, H, D // H
        self.b = Builder(shape=(batch, T, D), seed=seed, opset=opset)
        self.domains: list[str] = []
        self.shared: dict[tuple, str] = {}  # constant targets reused by every Reshape that wants the same one

    def f32(self, *shape: int, scale: float = 0.3) -> str:
        return self.b.const((self.b.rng.standard_normal(shape) * scale).astype(np.float32))

    def layer_norm(self, x: str) -> str:
        g = self.b.const(self.b.rng.uniform(0.5, 1.5, self.D).astype(np.float32), "g")
        return self.b.op("LayerNormalization", [x, g, self.f32(self.D, scale=0.1)], axis=-1)

    def linear(self, x: str, n_in: int, n_out: int, bias: bool = True, gemm: bool = False) -> str:
        """MatMul (+ Add bias), or Gemm on (N*T, n_in) and back to (N, T, n_out)."""
        b = self.b
        if gemm:
            flat = b.op("Reshape", [x, b.const(_i64(-1, n_in), "s")])
            y = b.op("Gemm", [flat, self.f32(n_out, n_in), self.f32(n_out, scale=0.1)], transB=1)
            return b.op("Reshape", [y, b.const(_i64(-1, self.T, n_out), "s")])
        y = b.op("MatMul", [x, self.f32(n_in, n_out)])
        return b.op("Add", [y, self.f32(n_out, scale=0.1)]) if bias else y

    def target(self, like: str, *tail: int, computed: bool = False) -> str:
        """(batch, T, *tail) as a constant [0, 0, ...] (one per tail, shared like a dynamo export's), or built
        at run time from Shape(like) (not foldable)."""
        b = self.b
        if not computed:
            if tail not in self.shared:
                self.shared[tail] = b.const(_i64(0, 0, *tail), "s")
            return self.shared[tail]
        dims = b.op("Slice", [b.op("Shape", [like]), b.const(_i64(0), "s"), b.const(_i64(2), "s")])
        return b.op("Concat", [dims] + [b.const(_i64(v), "s") for v in tail], axis=0)

    def attention(self, x: str, *, merged: bool = False, computed: bool = False, mask: str | None = None,
                  scale: str = "Div", gemm: bool = False) -> str:
        """Decomposed multi-head attention; returns the output projection's output (N, T, D)."""
        b, D, H, hd = self.b, self.D, self.H, self.hd
        if merged:
            qkv = self.linear(x, D, 3 * D, gemm=gemm)
            qkv = b.op("Reshape", [qkv, self.target(x, 3, H, hd, computed=computed)])
            qkv = b.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])
            q, k, v = (b.op("Gather", [qkv, b.const(np.array(i, np.int64), "s")], axis=0) for i in range(3))
            k = b.op("Transpose", [k], perm=[0, 1, 3, 2])
        else:
            heads = [b.op("Reshape", [self.linear(x, D, D, gemm=gemm), self.target(x, H, hd, computed=computed)])
                     for _ in range(3)]
            q = b.op("Transpose", [heads[0]], perm=[0, 2, 1, 3])
            k = b.op("Transpose", [heads[1]], perm=[0, 2, 3, 1])
            v = b.op("Transpose", [heads[2]], perm=[0, 2, 1, 3])
        s = b.op("MatMul", [q, k])
        s = b.op(scale, [s, b.const(np.array(np.sqrt(hd) if scale == "Div" else 1 / np.sqrt(hd), np.float32))])
        if mask == "const":
            s = b.op("Add", [s, self.f32(1, H, self.T, self.T)])
        elif mask == "input":
            b.inputs.append(helper.make_tensor_value_info("mask", onnx.TensorProto.FLOAT, ["N", 1, 1, self.T]))
            s = b.op("Add", [s, "mask"])
        ctx = b.op("MatMul", [b.op("Softmax", [s], axis=-1), v])
        ctx = b.op("Transpose", [ctx], perm=[0, 2, 1, 3])
        ctx = b.op("Reshape", [ctx, self.target(x, D, computed=computed)])
        return self.linear(ctx, D, D, gemm=gemm)

    def mlp(self, x: str, act: str = "erf", hidden: int = 32) -> str:
        b = self.b
        h = self.linear(x, self.D, hidden)
        if act == "erf":
            e = b.op("Erf", [b.op("Div", [h, b.const(np.array(np.sqrt(2), np.float32))])])
            h = b.op("Mul", [b.op("Mul", [h, b.const(np.array(0.5, np.float32))]),
                             b.op("Add", [e, b.const(np.array(1, np.float32))])])
        elif act == "tanh":
            cube = b.op("Mul", [b.op("Pow", [h, b.const(np.array(3, np.float32))]),
                                b.const(np.array(0.044715, np.float32))])
            t = b.op("Tanh", [b.op("Mul", [b.op("Add", [h, cube]), b.const(np.array(0.7978846, np.float32))])])
            h = b.op("Mul", [b.op("Mul", [h, b.const(np.array(0.5, np.float32))]),
                             b.op("Add", [t, b.const(np.array(1, np.float32))])])
        else:  # silu
            h = b.op("Mul", [h, b.op("Sigmoid", [h])])
        return self.linear(h, hidden, self.D)

    def build(self, y: str) -> onnx.ModelProto:
        b = self.b
        b.output(y, 3)
        g = helper.make_graph(b.nodes, "encoder", b.inputs, b.outputs, b.inits)
        opsets = [helper.make_opsetid("", b.opset)] + [helper.make_opsetid(d, 1) for d in self.domains]
        m = helper.make_model(g, opset_imports=opsets)
        m.ir_version = 10 if b.opset >= 21 else 8
        onnx.checker.check_model(m)
        return m


def encoder(act: str = "erf", batch: int | None = None, embed: bool = False, **attention) -> onnx.ModelProto:
    """One decomposed-attention encoder block (see :meth:`Encoder.attention` for the forms); ``embed``: the
    residual stream starts at a MatMul, so its hidden size is a prunable group that the LayerNorm freezes."""
    e = Encoder(batch=batch)
    x = e.linear("x", e.D, e.D) if embed else "x"
    x = e.b.op("Add", [x, e.attention(e.layer_norm(x), **attention)])
    return e.build(e.b.op("Add", [x, e.mlp(e.layer_norm(x), act=act)]))


def fused(kind: str, kv_heads: int | None = None, ln: bool = True) -> onnx.ModelProto:
    """Attention as one op: com.microsoft MultiHeadAttention ("mha"), ai.onnx Attention ("onnx", opset 23,
    grouped-query with ``kv_heads``) or com.microsoft Attention with its QKV weight inside ("ms"); without
    ``ln`` the op reads a projection (prunable channels) instead of a LayerNorm."""
    e = Encoder(opset=23 if kind == "onnx" else 17)
    b, D, H = e.b, e.D, e.H
    x = e.layer_norm("x") if ln else e.linear("x", D, D)
    if kind == "ms":
        e.domains.append("com.microsoft")
        ctx = b.op("Attention", [x, e.f32(D, 3 * D), e.f32(3 * D, scale=0.1)], num_heads=H, domain="com.microsoft")
    elif kind == "mha":
        e.domains.append("com.microsoft")
        q, k, v = (e.linear(x, D, D, bias=False) for _ in range(3))
        ctx = b.op("MultiHeadAttention", [q, k, v, e.f32(3 * D, scale=0.1)], num_heads=H, domain="com.microsoft")
    else:
        kv = kv_heads or H
        q = e.linear(x, D, D)
        k, v = (e.linear(x, D, kv * e.hd) for _ in range(2))
        ctx = b.op("Attention", [q, k, v], q_num_heads=H, kv_num_heads=kv)
    y = b.op("Add", ["x", e.linear(ctx, D, D)])
    return e.build(y)


def torch_encoder(layers: int = 1, T: int = 6, D: int = 16, H: int = 4, ffn: int = 32,
                  exporter: str = "legacy") -> onnx.ModelProto | None:
    """HF-BERT-style encoder blocks written in PyTorch, exported with a dynamic batch by the ``legacy``
    (TorchScript) or the ``dynamo`` exporter; None without torch (or, for dynamo, onnxscript)."""
    try:
        import torch
        if exporter == "dynamo":
            import onnxscript  # noqa: F401 - the dynamo exporter's dependency
    except ImportError:
        return None
    import io

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v, self.o = (torch.nn.Linear(D, D) for _ in range(4))
            self.ln1, self.ln2 = torch.nn.LayerNorm(D), torch.nn.LayerNorm(D)
            self.up, self.down = torch.nn.Linear(D, ffn), torch.nn.Linear(ffn, D)

        def forward(self, x):
            b, t, _ = x.shape
            h = self.ln1(x)
            q, k, v = (f(h).view(b, t, H, D // H).transpose(1, 2) for f in (self.q, self.k, self.v))
            p = torch.softmax(q @ k.transpose(-1, -2) / (D // H) ** 0.5, dim=-1)
            x = x + self.o((p @ v).transpose(1, 2).reshape(b, t, D))
            return x + self.down(torch.nn.functional.gelu(self.up(self.ln2(x))))

    torch.manual_seed(0)
    net = torch.nn.Sequential(*(Block() for _ in range(layers))).eval()
    if exporter == "dynamo":
        return torch.onnx.export(net, (torch.randn(2, T, D),), dynamo=True, input_names=["x"], output_names=["y"],
                                 dynamic_shapes=({0: torch.export.Dim("N")},), verbose=False).model_proto
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.randn(1, T, D),), buf, dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "N"}})
    return onnx.load_from_string(buf.getvalue())
