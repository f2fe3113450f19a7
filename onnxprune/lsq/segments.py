"""Evaluating a model piece by piece from cached activations, for the layer-by-layer re-fit.

The re-fit needs each layer's input in the *current* model, whose earlier
layers it has just changed. Running the whole model per layer costs one
forward pass per layer; running only the nodes between what is cached and
the tensor asked for costs about one forward pass per re-fit step.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper

from ..errors import CalibrationError
from ..graph.subgraph import extract, implicit_inputs
from ..runtime import make_session


class SegmentForward:
    """``compute(t)`` runs only the nodes between what is cached and ``t``.

    It keeps every tensor a later node still needs and drops the rest; the
    weights are read from the model at each call, so a layer re-fitted a
    moment ago is used.
    """

    def __init__(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> None:
        self.model = model
        self.values: dict[str, np.ndarray] = dict(feeds)
        self.done: set[int] = set()
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, set[int]] = {}
        for i, node in enumerate(model.graph.node):
            for out in node.output:
                if out:
                    self.producer[out] = i
            for name in list(node.input) + implicit_inputs(node):
                if name:
                    self.consumers.setdefault(name, set()).add(i)

    def _needed(self, name: str) -> list[int]:
        """Indices of the nodes between the cached tensors (and constants) and ``name``, in graph order."""
        graph = self.model.graph
        constants = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
        nodes: set[int] = set()
        stack = [name]
        seen: set[str] = set()
        while stack:
            tensor = stack.pop()
            if not tensor or tensor in seen or tensor in self.values or tensor in constants:
                continue
            seen.add(tensor)
            producer = self.producer.get(tensor)
            if producer is None:
                raise CalibrationError(f"tensor {tensor!r} is neither computed nor fed; the graph input is missing")
            if producer not in nodes:
                nodes.add(producer)
                stack.extend(graph.node[producer].input)
                stack.extend(implicit_inputs(graph.node[producer]))
        return sorted(nodes)

    def compute(self, name: str) -> np.ndarray:
        if name in self.values:
            return self.values[name]
        graph = self.model.graph
        order = self._needed(name)
        needed = set(order)
        produced = [out for i in order for out in graph.node[i].output if out]
        keep = [name] + [
            t for t in produced
            if t != name and graph.node[self.producer[t]].op_type != "Constant"
            and any(c not in needed and c not in self.done for c in self.consumers.get(t, ()))
        ]
        types = {k: helper.np_dtype_to_tensor_dtype(v.dtype) for k, v in self.values.items()}
        sub, feeds = extract(self.model, [graph.node[i] for i in order], keep, types=types, name="segment")
        try:
            results = make_session(sub).run(keep, {f: self.values[f] for f in feeds})
        except Exception as exc:  # onnxruntime raises its own exception classes
            raise CalibrationError(f"cannot evaluate the model on the calibration data: {str(exc)[:300]}") from None
        self.done.update(order)
        for tensor, value in zip(keep, results):
            self.values[tensor] = value
        out = self.values[name]
        for tensor in list(self.values):
            users = self.consumers.get(tensor, set())
            if tensor != name and users and users <= self.done:
                del self.values[tensor]
        return out
