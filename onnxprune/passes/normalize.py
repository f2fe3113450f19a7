"""Normalisation as a Pass: one canonical form of any exporter's model, proven to compute the same.

Before: a model as exported (Paddle's Constant-node weights, PyTorch's Pad
        amounts computed in shape sub-graphs, stale value_info, unnamed nodes).
After:  constants folded, nodes uniquely named, toposorted, shapes inferred
        (:func:`onnxprune.graph.normalize.normalize`).
Ensures: the normalised model gives the original's outputs on random inputs
        of the probed sizes. Every later exactness check compares against
        the normalised model, so this is what ties the written file to the
        user's own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import onnx

from ..errors import InvalidModelError, VerificationError
from ..graph.normalize import normalize
from ..graph.probe import input_dtypes
from ..graph.sizes import choose_input_shapes
from ..runtime import make_session
from .verify import uniform_inputs, verify_equivalent
from .base import Pass, PassResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NormalizeResult(PassResult):
    """The normalised model and the concrete input sizes it is probed at."""

    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


class NormalizePass(Pass):
    """Fold and canonicalise; the result's ``input_shapes`` are the concrete sizes the model is probed at."""

    name = "normalize"

    def __init__(self, input_shapes: Optional[dict[str, Sequence[int]]] = None, *, verify: bool = True) -> None:
        self.given = {k: list(v) for k, v in (input_shapes or {}).items()}
        self.verify = verify

    def call(self, model: onnx.ModelProto) -> NormalizeResult:
        normal = normalize(model)
        shapes = choose_input_shapes(model, self.given)  # the file as given: its value_info records sizes
        folded = len(model.graph.node) - len(normal.graph.node)
        return NormalizeResult(normal, True, (f"{len(normal.graph.node)} nodes ({folded:+d} folded away)"
                                              if folded else f"{len(normal.graph.node)} nodes",), shapes)

    def ensures(self, before: onnx.ModelProto, result: NormalizeResult) -> NormalizeResult:
        if not self.verify:
            return result
        shapes = result.input_shapes
        feeds = uniform_inputs(shapes, n=1, dtypes=input_dtypes(before))
        try:
            make_session(before).run(None, feeds[0])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
            raise InvalidModelError(f"onnxruntime cannot run the model on inputs {shapes}: "
                                    f"{str(exc).splitlines()[0]} (give the input size explicitly)") from None
        try:
            check = verify_equivalent(result.model, before, feeds, what="same outputs as the input model",
                                      structure=False)
        except VerificationError as exc:
            raise self.fail_post(f"constant folding changed the model's outputs ({exc})") from None
        return result.noted(check.summary())

