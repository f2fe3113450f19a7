"""Random attention blocks for the fuzzer: an NCHW activation read as H*W tokens of C channels.

``attention`` draws the forms the analysis proves heads in (separate or merged
QKV, MatMul or Gemm projections, constant or Shape/Concat-built Reshape
targets, per-head or broadcast masks, scale before or after Q K^T, residual
or not); ``odd_attention`` draws near misses it must freeze (Softmax over
the heads, a split reduced before any attention MatMul, heads meeting an
unprojected key). Both return to NCHW for the rest of the chain.
"""

from __future__ import annotations

import numpy as np


def _i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def _tokens(g, t):
    b = g.b
    y = b.op("Reshape", [t.name, b.const(_i64(0, t.c, t.h * t.w))])
    return b.op("Transpose", [y], perm=[0, 2, 1]), t.h * t.w


def _back(g, y: str, t, c: int):
    from fuzz_graphs import T
    b = g.b
    y = b.op("Transpose", [y], perm=[0, 2, 1])
    return T(b.op("Reshape", [y, b.const(_i64(0, c, t.h, t.w))]), c, t.h, t.w)


def _linear(g, x: str, n_in: int, n_out: int, tokens: int, gemm: bool) -> str:
    b, r = g.b, g.r
    w = (r.standard_normal((n_in, n_out)) * 0.3).astype(np.float32)
    if gemm:
        flat = b.op("Reshape", [x, b.const(_i64(-1, n_in))])
        y = b.op("Gemm", [flat, b.const(w.T.copy()), b.const(r.standard_normal(n_out).astype(np.float32) * 0.1)],
                 transB=1)
        return b.op("Reshape", [y, b.const(_i64(-1, tokens, n_out))])
    y = b.op("MatMul", [x, b.const(w)])
    if r.random() < 0.7:
        y = b.op("Add", [y, b.const(r.standard_normal(n_out).astype(np.float32) * 0.1)])
    return y


def _target(g, like: str, *tail: int) -> str:
    b = g.b
    if g.r.random() < 0.6:
        return b.const(_i64(0, 0, *tail))
    dims = b.op("Slice", [b.op("Shape", [like]), b.const(_i64(0)), b.const(_i64(2))])
    return b.op("Concat", [dims] + [b.const(_i64(v)) for v in tail], axis=0)


def attention(g, t, odd: str = ""):
    """Multi-head self-attention over the H*W positions of ``t``; ``odd`` picks a near miss instead."""
    b, r = g.b, g.r
    x, n = _tokens(g, t)
    heads, hd = int(g.pick([1, 2, 3, 4])), int(g.pick([2, 3, 4]))
    d = heads * hd
    gemm = bool(r.random() < 0.25)
    if r.random() < 0.4 and not odd:
        qkv = b.op("Reshape", [_linear(g, x, t.c, 3 * d, n, gemm), _target(g, x, 3, heads, hd)])
        qkv = b.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])
        q, k, v = (b.op("Gather", [qkv, b.const(np.array(i, np.int64))], axis=0) for i in range(3))
        k = b.op("Transpose", [k], perm=[0, 1, 3, 2])
    else:
        split = [b.op("Reshape", [_linear(g, x, t.c, d, n, gemm), _target(g, x, heads, hd)]) for _ in range(3)]
        if odd == "raw_key" and t.c == d:
            split[1] = b.op("Reshape", [x, b.const(_i64(0, 0, heads, hd))])
        q = b.op("Transpose", [split[0]], perm=[0, 2, 1, 3])
        k = b.op("Transpose", [split[1]], perm=[0, 2, 3, 1])
        v = b.op("Transpose", [split[2]], perm=[0, 2, 1, 3])
        if odd == "reduce":
            q = b.op("Mul", [q, b.op("ReduceMean", [q, b.const(_i64(3))], keepdims=1)])
    if r.random() < 0.3:
        q = b.op("Mul", [q, b.const(np.array(hd ** -0.5, np.float32))])
    s = b.op("MatMul", [q, k])
    if r.random() < 0.6:
        s = b.op(g.pick(["Mul", "Div"]), [s, b.const(np.array(hd ** 0.5, np.float32))])
    mask = g.pick(["none", "heads", "shared"])
    if mask != "none":
        shape = (1, heads, n, n) if mask == "heads" else (1, 1, n, n)
        s = b.op("Add", [s, b.const(r.standard_normal(shape).astype(np.float32))])
    s = b.op("Softmax", [s], axis=1 if odd == "softmax_heads" else -1)
    ctx = b.op("Transpose", [b.op("MatMul", [s, v])], perm=[0, 2, 1, 3])
    ctx = b.op("Reshape", [ctx, _target(g, x, d)])
    y = _linear(g, ctx, d, t.c, n, gemm)
    if r.random() < 0.5:
        y = b.op("Add", [x, y])
    return _back(g, y, t, t.c)


def odd_attention(g, t):
    return attention(g, t, odd=g.pick(["softmax_heads", "reduce", "raw_key"]))
