"""Fused attention ops: heads (KV groups) of ``MultiHeadAttention`` and ai.onnx ``Attention`` as units.

Both take Q, K and V from projections upstream (3-D: batch, sequence,
heads x head_dim) and return the heads' outputs side by side, so a head is
the same unit as in decomposed attention: its head_dim channels of Q, K, V
and of the output. With grouped-query attention (ai.onnx ``kv_num_heads`` <
``q_num_heads``) query head h reads KV head h // (q/kv), so a whole KV group
goes together. Surgery rewrites the head counts and slices the merged QKV
bias and per-head masks. com.microsoft ``Attention`` holds its merged QKV
weight inside the op and is frozen with the reason; so is a KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..channels import Labels
from .base import OpRule, _const, _input
from .context import AnalysisContext, RewriteContext


@dataclass(frozen=True)
class _Form:
    """Where one fused op keeps what a head owns."""

    q_heads: str  # attribute with the query head count
    kv_heads: str  # attribute with the KV head count (the same attribute without GQA)
    bias: Optional[int]  # merged [q | k | v] bias input
    per_head: int  # mask / attention bias broadcast to (batch, heads, T, S)
    cache: tuple[int, ...]  # KV-cache inputs: not supported


_MHA = _Form("num_heads", "num_heads", 3, 5, (6, 7, 8, 9))
_ONNX = _Form("q_num_heads", "kv_num_heads", None, 3, (4, 5, 6))


def _form(node: gs.Node) -> Optional[_Form]:
    if node.op == "MultiHeadAttention" and node.domain == "com.microsoft":
        return _MHA
    if node.op == "Attention" and (node.domain or "") in ("", "ai.onnx"):
        return _ONNX
    return None


def _per_head_axis(shape: tuple[int, ...], heads: int) -> Optional[int]:
    """The axis of a (…, heads, T, S)-broadcast mask that indexes heads, None when it broadcasts over them."""
    return len(shape) - 3 if len(shape) >= 3 and shape[-3] == heads else None


class FusedAttentionRule(OpRule):
    """MultiHeadAttention / ai.onnx Attention: unite each head's Q, K, V and output channels into one unit."""

    def propagate(self, a: AnalysisContext, node: gs.Node) -> None:
        form = _form(node)
        if form is None:
            a.freeze_inputs(node, f"{node.domain or 'ai.onnx'} {node.op} {node.name!r}: fused attention with its "
                                  "QKV weight inside the op; its heads are not pruned")
            super().propagate(a, node)
            return
        why = self._refusal(a, node, form)
        if why:
            a.freeze_inputs(node, f"{node.op} {node.name!r}: {why}")
            return
        q, k, v = (a.get(t) for t in node.inputs[:3])
        nq, nkv = int(node.attrs[form.q_heads]), int(node.attrs[form.kv_heads])
        r = nq // nkv
        groups = [np.arange(q.size) // (q.size // nq) // r, np.arange(k.size) // (k.size // nkv),
                  np.arange(v.size) // (v.size // nkv)]
        units = np.empty(nkv, dtype=np.int64)
        for g in range(nkv):
            members = np.concatenate([lab.units[grp == g] for lab, grp in zip((q, k, v), groups)])
            root = int(members[0])
            for u in members[1:]:
                root = a.unite(root, int(u))
            units[g] = root
        a.mark_heads(units, node.name)
        out = node.outputs[0]
        width = a.shape(out)[2]
        a.set(out, Labels(2, units[np.arange(width) // (width // nq) // r]))

    @staticmethod
    def _refusal(a: AnalysisContext, node: gs.Node, form: _Form) -> str:
        """Why this node's heads cannot be units ("" when they can)."""
        if len(node.inputs) < 3 or any(_input(node, i) is None for i in range(3)):
            return "packed QKV input (no separate key and value)"
        labels = [a.get(t) for t in node.inputs[:3]]
        if any(lab is None for lab in labels):
            return "query, key and value must all come from prunable projections"
        if any(len(a.shape(t)) != 3 or lab.axis != 2 for t, lab in zip(node.inputs[:3], labels)):
            return "only 3-D (batch, sequence, heads x head_dim) query/key/value are supported"
        nq, nkv = int(node.attrs.get(form.q_heads, 0)), int(node.attrs.get(form.kv_heads, 0))
        if nq < 1 or nkv < 1 or nq % nkv or labels[0].size % nq or any(lab.size % nkv for lab in labels[1:]):
            return f"head counts {form.q_heads}={nq}, {form.kv_heads}={nkv} do not divide the widths"
        if any(_input(node, i) is not None for i in form.cache):
            return "KV cache (past key/value) inputs"
        if any(o.outputs for o in node.outputs[1:]):
            return "its present key/value or QK outputs are used"
        if form.bias is not None and _input(node, form.bias) is not None and _const(node.inputs[form.bias]) is None:
            return "QKV bias computed at run time"
        mask = _input(node, form.per_head)
        if mask is not None and _per_head_axis(a.shape(mask), nq) is not None and _const(mask) is None:
            return "per-head mask or attention bias computed at run time"
        return ""

    def rewrite(self, s: RewriteContext, node: gs.Node) -> None:
        form = _form(node)
        keep = [s.keep(t) for t in node.inputs[:3]]
        if form is None or all(k is None for k in keep):
            return
        keep = [k if k is not None else np.ones(s.labels(t).size, dtype=bool) for k, t in zip(keep, node.inputs[:3])]
        nq, nkv = int(node.attrs[form.q_heads]), int(node.attrs[form.kv_heads])
        kept_kv = int(keep[1].sum()) // (keep[1].size // nkv)
        node.attrs[form.kv_heads] = kept_kv
        node.attrs[form.q_heads] = kept_kv * (nq // nkv)
        if form.bias is not None and _input(node, form.bias) is not None:
            s.set_const(node, form.bias, _const(node.inputs[form.bias])[np.concatenate(keep)])
        mask = _input(node, form.per_head)
        if mask is not None and _const(mask) is not None:
            axis = _per_head_axis(_const(mask).shape, nq)
            if axis is not None:
                s.set_const(node, form.per_head, np.compress(keep[0][::keep[0].size // nq], _const(mask), axis=axis))
