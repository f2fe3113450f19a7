"""Channel pruning as a Pass: surgery whose ``ensures`` is the exactness check (invariant 1).

Before: the normalised model the analysis was built on.
After:  the same model with every channel of the removed units physically
        gone (:func:`onnxprune.graph.surgery.prune_channels`).
Ensures: ONNX checker, strict shape inference, an onnxruntime session, and
        outputs equal to the *masked reference* (the original with the
        removed channels zeroed where consumed) on random inputs and, when
        given, real ones. Anything else raises and nothing is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
import onnx

from ..errors import VerificationError
from ..graph.analysis import Analysis
from ..graph.external import needs_external
from ..graph.probe import input_dtypes
from ..graph.surgery import masked_reference, prune_channels
from .verify import VerificationResult, uniform_inputs, verify_equivalent
from .base import Pass, PassResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SurgeryResult(PassResult):
    """The pruned model, the exactness check (None when not verified) and the residual branches dropped."""

    verification: Optional[VerificationResult] = None
    dropped_groups: tuple[int, ...] = ()


class PruneChannelsPass(Pass):
    """Remove the channels of ``removed`` (unit roots of ``analysis``); verify exactness unless told not to."""

    name = "prune-channels"

    def __init__(self, analysis: Analysis, removed: Sequence[int], *, verify: bool = True,
                 extra_feeds: Iterable[dict[str, np.ndarray]] = ()) -> None:
        self.analysis = analysis
        self.removed = sorted({int(r) for r in removed})
        self.verify = verify
        self.extra_feeds = list(extra_feeds)

    def requires(self, model: onnx.ModelProto) -> None:
        if model is not self.analysis.proto:
            raise self.fail_pre("the model is not the one the channel analysis was built on")
        rem = np.array(self.removed, dtype=np.int64)
        unknown = [r for r in self.removed if not self.analysis.is_prunable(r)]
        if unknown:
            raise self.fail_pre(f"{len(unknown)} unit(s) to remove are frozen or unknown (first: {unknown[0]})")
        emptied: set[str] = set()  # tensors of droppable groups removed entirely: their branch goes
        for gid in self.analysis.dropped_groups(self.removed):
            emptied |= self.analysis.drops[gid].tensors
        for name in self.analysis.labels:
            keep = self.analysis.keep_mask(name, rem)
            if keep is not None and keep.size and not keep.any() and name not in emptied:
                gid = self.analysis.group_of.get(int(self.analysis.root_of[self.analysis.labels[name].units[0]]))
                why = self.analysis.groups[gid].drop_reason if gid is not None else None
                raise self.fail_pre(f"the removal leaves tensor {name!r} without a channel; "
                                    "a group must keep at least one" + (f" (it cannot go entirely: {why})" if why else ""))

    def call(self, model: onnx.ModelProto) -> SurgeryResult:
        pruned = prune_channels(self.analysis, self.removed)
        kernels = sum(len(self.analysis.unit_kernels[r]) for r in self.removed)
        notes = (f"{kernels} kernel(s) removed",)
        dropped = self.analysis.dropped_groups(self.removed)
        if dropped:
            notes += (f"{len(dropped)} residual branch(es) removed entirely",)
        return SurgeryResult(pruned, bool(self.removed), notes, dropped_groups=tuple(dropped))

    def ensures(self, before: onnx.ModelProto, result: SurgeryResult) -> SurgeryResult:
        if not self.verify:
            return result.noted("exactness not verified")
        big = needs_external(self.analysis.proto)  # the reference then names the analysed model's weights
        reference = (masked_reference(self.analysis, self.removed, stubs=True) if big
                     else masked_reference(self.analysis, self.removed))
        feeds = uniform_inputs(self.analysis.probe.input_shapes, n=1,
                               dtypes=input_dtypes(self.analysis.proto)) + self.extra_feeds
        try:
            verification = verify_equivalent(result.model, reference, feeds,
                                             reference_weights=self.analysis.proto if big else None)
        except VerificationError as exc:
            raise self.fail_post(str(exc)) from None
        return result.noted(verification.summary(), verification=verification)


def build_pruned(p, removed: Sequence[int], *, verify: bool = True,
                 extra_feeds: Iterable[dict[str, np.ndarray]] = ()) -> tuple[onnx.ModelProto, Optional[VerificationResult]]:
    """Surgery plus verification on a Prepared model: (pruned model, verification or None)."""
    result = PruneChannelsPass(p.analysis, removed, verify=verify, extra_feeds=extra_feeds)(p.model)
    return result.model, result.verification
