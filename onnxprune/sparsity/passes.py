"""Unstructured sparsity as passes: zero weights by mask (and re-fit), then store them sparse where it pays.

Before (``SparsifyPass``): Conv / Gemm / MatMul weights, maybe with zeros of
        earlier passes (those are their masks), in any storage.
After:  dense weights with new zeros chosen by the filler over the schedule's
        steps (or given masks), the survivors unchanged or, with calibration
        data, re-fitted by least squares; the pass recorded in the metadata.
        Promise: zero outside every mask, every surviving weight that was not
        re-fitted unchanged, and outputs *identical* to the reference (the
        input's weights x mask, re-fitted layers as fitted).

Before (``SparseStoragePass``): a model with sparsified dense weights.
After:  the weights whose ONNX sparse tensor is smaller stored that way.
        Promise: outputs identical to the dense model; a candidate that is not
        (or is no smaller) is dropped and the dense model kept.

Both check exactness with :func:`onnxprune.passes.verify.verify_equivalent` at zero
tolerance, on the inputs channel pruning uses (:func:`uniform_inputs`) or on
real calibration samples when given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx
from onnx import helper

from ..errors import VerificationError
from ..fidelity.distortion import relative_l2
from ..graph.sizes import choose_input_shapes
from ..passes.base import Pass, PassResult
from ..runtime import make_session
from ..passes.verify import VerificationResult, uniform_inputs, verify_equivalent
from .config import SUPPORTED_OP_TYPES, SparsifyConfig
from .history import pass_record, read_history, write_history
from .masks import WeightTargets, step_masks
from .results import StorageDecision
from .weights import find_weights, read_weight, sparse_nbytes, write_weights

logger = logging.getLogger(__name__)

Feeds = list[dict[str, np.ndarray]]

# Zero tolerance: storage and masking must not change a single bit of the outputs.
_EXACT = {"rtol": 0.0, "atol": 0.0}

# Bytes a sparse tensor costs beyond its payload (names, dims, field tags); a weight is
# stored sparse only when it wins by more than this.
_SPARSE_OVERHEAD = 64


def verification_feeds(model: onnx.ModelProto, calibration: Mapping[str, np.ndarray] | None
                       ) -> tuple[Feeds, str]:
    """Two real samples when the user gave some, channel pruning's uniform random inputs otherwise."""
    if calibration:
        n = min(2, min(len(v) for v in calibration.values()))
        return [{k: np.ascontiguousarray(v[:n]) for k, v in calibration.items()}], "calibration samples"
    shapes = choose_input_shapes(model)  # the sizes the channel analysis probes with, same defaults
    dtypes = {i.name: helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type or onnx.TensorProto.FLOAT)
              for i in model.graph.input if i.name in shapes}
    return uniform_inputs(shapes, n=1, dtypes=dtypes), "random inputs"


def _verify(model: onnx.ModelProto, reference: onnx.ModelProto, feeds: Feeds, what: str) -> VerificationResult:
    """verify_equivalent at zero tolerance; for a model with sparse initializers the checker stands in
    for strict shape inference, which does not read sparse_initializer (its weights come out rank 0)."""
    if not model.graph.sparse_initializer:
        return verify_equivalent(model, reference, feeds, what=what, **_EXACT)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise VerificationError(f"fails the ONNX checker: {str(exc).strip().splitlines()[0]}") from None
    result = verify_equivalent(model, reference, feeds, what=what, structure=False, **_EXACT)
    result.checks.insert(0, "onnx.checker")
    return result


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


@dataclass(frozen=True)
class SparsifyPassResult(PassResult):
    """What sparsifying did: the final masks and weight arrays, the re-fit per weight (of the last step) and
    which weights were ever re-fitted, the zeros before, the thresholds stepped through, the history written;
    after ``ensures`` the verification and the relative change of the outputs."""

    masks: dict[str, np.ndarray] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    refit_status: dict[str, str] = field(default_factory=dict)
    refitted: frozenset[str] = frozenset()
    refit: bool = False
    zeros_before: dict[str, int] = field(default_factory=dict)
    steps: tuple[float, ...] = ()
    history: tuple = ()
    verification: Optional[VerificationResult] = None
    output_change: Optional[float] = None


@dataclass(frozen=True)
class StorageResult(PassResult):
    """The storage chosen (sparse or dense, with the reason) and, for sparse, its verification."""

    storage: Optional[StorageDecision] = None
    verification: Optional[VerificationResult] = None


class SparsifyPass(Pass):
    """Zero the weights the filler (or the given masks) picks, step by step, re-fitting between steps.

    ``calibration`` (arrays by input name) turns on the re-fit when
    ``config.refit``; ``feeds`` / ``feed_kind`` are the verification inputs
    (:func:`verification_feeds`). The result is a :class:`SparsifyPassResult`.
    """

    name = "sparsify"

    def __init__(self, config: SparsifyConfig, targets: WeightTargets,
                 calibration: Mapping[str, np.ndarray] | None = None, *, feeds: Optional[Feeds] = None,
                 feed_kind: str = "random inputs") -> None:
        self.config = config
        self.targets = targets
        self.calibration = calibration if config.refit else None
        self.feeds = feeds
        self.feed_kind = feed_kind

    def requires(self, model: onnx.ModelProto) -> None:
        found = {r.name: r.shape for r in find_weights(model, SUPPORTED_OP_TYPES)[0]}
        for ref in self.targets.refs:
            if found.get(ref.name) != ref.shape:
                raise self.fail_pre(f"the model has no weight {ref.name!r} of shape {list(ref.shape)}")

    def call(self, model: onnx.ModelProto) -> SparsifyPassResult:
        config, targets = self.config, self.targets
        base = _copy(model)
        weights_in = {r.name: read_weight(base, r) for r in targets.refs}
        refs = write_weights(base, list(targets.refs), weights_in)  # dense copies, whatever the input storage
        work = _copy(base)
        current = dict(weights_in)
        mask_now = {name: w != 0 for name, w in current.items()}
        zeros_before = {name: int(m.size - np.count_nonzero(m)) for name, m in mask_now.items()}
        refitter = None
        if self.calibration is not None:
            from .refit import Refitter  # the re-fit pulls in least squares: only when it runs
            refitter = Refitter(base, refs, self.calibration, config)
        refit_status: dict[str, str] = {}  # of the last step
        refitted: set[str] = set()  # re-fitted at any step
        rng = np.random.default_rng(config.seed)
        steps: tuple[float, ...] = () if targets.masks else config.schedule()
        start_masks = dict(mask_now)
        for index in range(1 if targets.masks else len(steps)):
            if targets.masks:
                new_masks = {name: mask_now[name] & m for name, m in targets.masks.items()}
            else:
                new_masks = step_masks(steps[index], refs, current, mask_now, start_masks, targets.importance,
                                       config, rng)
                logger.info("step %d/%d: threshold %.3f", index + 1, len(steps), steps[index])
            for name, m in new_masks.items():
                current[name] = np.where(m, current[name], np.float32(0.0)).astype(np.float32)
                mask_now[name] = m
            write_weights(work, refs, {name: current[name] for name in new_masks})
            if refitter is not None:
                refit_status = refitter.refit(work, new_masks)
                refitted.update(name for name, s in refit_status.items() if s.startswith("re-fitted"))
                for ref in refs:
                    if ref.name in new_masks:
                        current[ref.name] = read_weight(work, ref)
        record = pass_record(config, targets.masks, targets.importance, refitter is not None, steps, refs,
                             zeros_before, current)
        history = read_history(model) + [record]
        write_history(work, history)
        notes = tuple(f"{n}: re-fit {s}" for n, s in refit_status.items() if s.startswith("skip"))
        return SparsifyPassResult(work, True, notes, masks=mask_now, weights=current, refit_status=refit_status,
                                  refitted=frozenset(refitted), refit=refitter is not None,
                                  zeros_before=zeros_before, steps=steps, history=tuple(history))

    def ensures(self, before: onnx.ModelProto, result: SparsifyPassResult) -> SparsifyPassResult:
        masks, refitted = result.masks, result.refitted
        refs = [r for r in find_weights(result.model, SUPPORTED_OP_TYPES)[0] if r.name in masks]
        given_refs = {r.name: r for r in self.targets.refs}
        reference = _copy(result.model)
        exact = {}
        for ref in refs:
            weight, mask = read_weight(result.model, ref), masks[ref.name]
            given = read_weight(before, given_refs[ref.name])
            if np.count_nonzero(weight[~mask]):
                raise self.fail_post(f"{ref.name} has non-zero weights outside its mask; nothing written")
            if ref.name not in refitted:
                if not np.array_equal(weight[mask], given[mask]):
                    raise self.fail_post(f"surviving weights of {ref.name} changed; nothing written")
                exact[ref.name] = np.where(mask, given, np.float32(0.0))
        write_weights(reference, refs, exact)  # the input's weights x mask, re-fitted layers as fitted
        feeds = self.feeds if self.feeds is not None else verification_feeds(before, self.calibration)[0]
        what = "exactness vs input weights x mask" + (" (re-fitted layers as fitted)" if refitted else "")
        try:
            verification = _verify(result.model, reference, feeds, what)
            change = relative_l2(_run(before, feeds), _run(reference, feeds))
        except VerificationError as exc:
            hint = "; pass calibration data with real inputs" if self.feed_kind == "random inputs" else ""
            raise self.fail_post(f"on {self.feed_kind}: {exc}{hint}") from None
        return result.noted(verification=verification, output_change=change)


def _run(model: onnx.ModelProto, feeds: Feeds) -> list[np.ndarray]:
    """Every output of ``model`` on every feed, in order."""
    try:
        session = make_session(model)
        return [out for feed in feeds for out in session.run(None, feed)]
    except Exception as exc:  # onnxruntime raises its own exception classes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VerificationError(f"cannot run the model: {first[:200]}") from None


class SparseStoragePass(Pass):
    """Store the named weights as ONNX sparse tensors where the file gets smaller and outputs stay identical.

    The result's ``storage`` is the :class:`StorageDecision`, with the reason.
    """

    name = "sparse-storage"

    def __init__(self, names: Sequence[str], *, dense: bool = False, feeds: Optional[Feeds] = None) -> None:
        self.names = frozenset(names)
        self.dense = dense
        self.feeds = feeds

    def call(self, model: onnx.ModelProto) -> StorageResult:
        dense_bytes = model.ByteSize()
        if self.dense:
            return self._dense(model, "--dense: ordinary dense initializers with zeros (masks made permanent, "
                               "like torch's prune.remove)", None)
        refs = [r for r in find_weights(model, SUPPORTED_OP_TYPES)[0] if r.name in self.names]
        weights = {r.name: read_weight(model, r) for r in refs}
        candidates = [r.name for r in refs
                      if sparse_nbytes(np.count_nonzero(weights[r.name])) + _SPARSE_OVERHEAD < 4 * r.size]
        if not candidates:
            return self._dense(model, "no weight is sparse enough: with the int64 indices ONNX requires, a sparse "
                               "tensor is smaller only below 1/3 density (above 67% sparsity)", None)
        candidate = _copy(model)
        write_weights(candidate, refs, {n: weights[n] for n in candidates}, sparse=frozenset(candidates))
        sparse_bytes = candidate.ByteSize()
        if sparse_bytes >= dense_bytes:
            return self._dense(model, f"sparse storage would not be smaller ({sparse_bytes} vs {dense_bytes} bytes)",
                               sparse_bytes)
        decision = StorageDecision(
            "sparse", f"{len(candidates)} of {len(refs)} weights as ONNX sparse tensors: {sparse_bytes} bytes "
            f"instead of {dense_bytes}", dense_bytes, sparse_bytes, tuple(candidates))
        return StorageResult(candidate, True, (decision.reason,), storage=decision)

    @staticmethod
    def _dense(model: onnx.ModelProto, reason: str, sparse_bytes: Optional[int]) -> StorageResult:
        decision = StorageDecision("dense", reason, model.ByteSize(), sparse_bytes)
        return StorageResult(model, False, (f"dense: {reason}",), storage=decision)

    def ensures(self, before: onnx.ModelProto, result: StorageResult) -> StorageResult:
        """Keep the sparse model only when onnxruntime gives exactly the dense model's outputs."""
        decision = result.storage
        if decision.format != "sparse":
            return result
        feeds = self.feeds if self.feeds is not None else verification_feeds(before, None)[0]
        try:
            verification = _verify(result.model, before, feeds, "outputs identical to the dense model")
        except VerificationError as exc:
            logger.warning("sparse storage rejected, writing dense: %s", exc)
            return self._dense(before, f"sparse storage rejected: {exc}", decision.sparse_bytes)
        checked = StorageDecision(decision.format, f"{decision.reason}; {verification.summary()}",
                                  decision.dense_bytes, decision.sparse_bytes, decision.sparse_tensors)
        return StorageResult(result.model, True, (checked.reason,), storage=checked, verification=verification)
