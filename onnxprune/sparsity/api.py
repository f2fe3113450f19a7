"""``sparsify``: zero a fraction of the weights, verify, store sparse where it pays.

The pipeline: load (the input is never modified) -> find the Conv / Gemm /
MatMul weights -> masks of earlier passes are the zeros already there ->
for each step of the schedule, a filler picks new zeros among the survivors
(optionally a least-squares re-fit of the survivors follows) -> record the
pass in the metadata -> choose storage (ONNX sparse tensors only where the
file gets smaller *and* onnxruntime gives identical outputs) -> verify
against the input with the masks applied -> write atomically.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import onnx

from ..errors import InvalidArgumentError, NothingToPruneError, VerificationError
from ..graph.io import ModelLike, check_output_path, load_model, save_model_atomic
from .config import SUPPORTED_OP_TYPES, SparsifyConfig, ceil_fraction
from .fillers import count_slices, ln_structured_mask, unstructured_mask
from .history import other_onnxprune_metadata, read_history, write_history
from .refit import CalibrationData, Refitter, collect_calibration
from .verify import CheckOutcome, check_candidate, relative_change, run_model, verification_feeds
from .weights import (CONSTANT, CONSTANT_SPARSE, SPARSE_INITIALIZER, WeightRef, find_weights, read_weight,
                      sparse_nbytes, write_weights)

logger = logging.getLogger(__name__)

NamedArrays = Union[Mapping[str, np.ndarray], str, os.PathLike]

# Bytes a sparse tensor costs beyond its payload (names, dims, field tags); a weight is
# stored sparse only when it wins by more than this.
_SPARSE_OVERHEAD = 64


@dataclass(frozen=True)
class LayerStats:
    """One weight before and after the pass."""

    name: str
    op_types: tuple[str, ...]
    nodes: tuple[str, ...]
    shape: tuple[int, ...]
    size: int
    zeros_before: int
    zeros_after: int
    zero_channels: int  # all-zero output channels (structured zeros) after the pass
    channels: int
    storage: str  # sparse | dense
    source: str  # initializer | constant
    refit: str

    @property
    def sparsity_before(self) -> float:
        return self.zeros_before / self.size

    @property
    def sparsity_after(self) -> float:
        return self.zeros_after / self.size


@dataclass(frozen=True)
class StorageDecision:
    """How the weights were stored and why."""

    format: str  # sparse | dense
    reason: str
    dense_bytes: int
    sparse_bytes: int | None
    sparse_tensors: tuple[str, ...] = ()


@dataclass(frozen=True)
class VerificationReport:
    """What was checked on the written model."""

    ok: bool
    message: str
    inputs: str
    output_change: float  # relative L2 change of the outputs against the input model


@dataclass(frozen=True)
class SparsifyResult:
    """The sparsified model and everything the CLI reports."""

    model: onnx.ModelProto
    layers: tuple[LayerStats, ...]
    storage: StorageDecision
    verification: VerificationReport
    masks: Mapping[str, np.ndarray]
    history: tuple[dict[str, Any], ...]
    steps: tuple[float, ...]
    notes: tuple[str, ...] = ()
    output_path: Path | None = None

    @property
    def total_size(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def total_zeros(self) -> int:
        return sum(layer.zeros_after for layer in self.layers)

    @property
    def sparsity(self) -> float:
        return self.total_zeros / self.total_size if self.total_size else 0.0


@dataclass(frozen=True)
class LayerInfo:
    """Sparsity of one weight of a model as it is, with its recorded history."""

    name: str
    op_types: tuple[str, ...]
    nodes: tuple[str, ...]
    shape: tuple[int, ...]
    size: int
    zeros: int
    zero_channels: int
    channels: int
    storage: str
    history: tuple[float | None, ...]  # sparsity after each recorded pass (None: not in that pass)

    @property
    def sparsity(self) -> float:
        return self.zeros / self.size


@dataclass(frozen=True)
class SparsityInfo:
    """Per-layer sparsity of a model and the passes that produced it."""

    layers: tuple[LayerInfo, ...]
    history: tuple[dict[str, Any], ...]
    other_metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def total_size(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def total_zeros(self) -> int:
        return sum(layer.zeros for layer in self.layers)

    @property
    def sparsity(self) -> float:
        return self.total_zeros / self.total_size if self.total_size else 0.0


def sparsify(model_input: ModelLike, model_output: str | os.PathLike | None = None,
             config: SparsifyConfig | None = None, calibration_data: CalibrationData | None = None,
             masks: NamedArrays | None = None, importance_scores: NamedArrays | None = None) -> SparsifyResult:
    """Zero a fraction of the Conv/Gemm/MatMul weights of ``model_input``.

    ``masks`` (torch's custom_from_mask, N2D2's mask files) and
    ``importance_scores`` map weight names to arrays of the weight's shape, or
    name an ``.npz`` holding them. With ``masks`` the filler is not used: the
    given masks are combined with those already in the model. Calibration data
    turns on the least-squares re-fit of the surviving weights after each step.
    Writes ``model_output`` atomically, only after every check passed.
    """
    config = config if config is not None else SparsifyConfig()
    if not isinstance(config, SparsifyConfig):
        raise InvalidArgumentError(f"config must be a SparsifyConfig, got {type(config).__name__}")
    input_path = None if isinstance(model_input, onnx.ModelProto) else model_input
    if model_output is not None:
        check_output_path(model_output, input_path)
    source = load_model(model_input)
    refs, notes = find_weights(source, config.op_types, config.exclude)
    if not refs:
        raise NothingToPruneError(
            f"no float32 weight of a {'/'.join(config.op_types)} node to sparsify"
            + (f" ({'; '.join(notes)})" if notes else "")
            + "; check --op-types and --exclude"
        )
    base = onnx.ModelProto()
    base.CopyFrom(source)
    weights_in = {r.name: read_weight(base, r) for r in refs}
    refs = write_weights(base, refs, weights_in)  # work on dense copies, whatever the input storage
    custom = _named_arrays(masks, refs, "mask", config)
    importance = _named_arrays(importance_scores, refs, "importance scores", config)
    if custom and config.mode == "gradual":
        raise InvalidArgumentError("explicit masks are applied at once; use mode static with masks")
    if importance and config.filler == "random":
        raise InvalidArgumentError("importance scores have no effect with the random filler; choose l1, "
                                   "iternonstruct or ln")
    if config.filler == "ln" and not custom:
        for ref in refs:
            if not -len(ref.shape) <= config.dim < len(ref.shape):
                raise InvalidArgumentError(
                    f"--dim {config.dim} is out of range for {ref.name} of shape {list(ref.shape)}; "
                    "pick a dim every weight has, or narrow --op-types / --exclude"
                )
    calibration = None
    if calibration_data is not None and config.refit:
        calibration = collect_calibration(calibration_data, base, config.refit_samples)

    work = onnx.ModelProto()
    work.CopyFrom(base)
    current = dict(weights_in)
    mask_now = {name: w != 0 for name, w in current.items()}
    zeros_before = {name: int(m.size - np.count_nonzero(m)) for name, m in mask_now.items()}
    refitter = Refitter(base, refs, calibration, config) if calibration is not None else None
    refit_status: dict[str, str] = {}  # of the last step
    refitted: set[str] = set()  # re-fitted at any step
    rng = np.random.default_rng(config.seed)
    steps: tuple[float, ...] = () if custom else config.schedule()
    start_masks = dict(mask_now)
    plan = [custom] if custom else [None] * len(steps)
    for index, given in enumerate(plan):
        if given is not None:
            new_masks = {name: mask_now[name] & m for name, m in given.items()}
        else:
            new_masks = _step_masks(steps[index], refs, current, mask_now, start_masks, importance, config, rng)
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
    for name, m in mask_now.items():
        if np.count_nonzero(current[name][~m]):
            raise VerificationError(f"internal error: {name} has non-zero weights outside its mask; nothing written")
        if name not in refitted and not np.array_equal(current[name][m], weights_in[name][m]):
            raise VerificationError(f"internal error: surviving weights of {name} changed; nothing written")

    record = _pass_record(config, custom, importance, refitter is not None, steps, refs, zeros_before, current)
    history = read_history(source) + [record]
    write_history(work, history)

    # The reference recomputes every non-re-fitted weight from the input and the mask.
    reference = onnx.ModelProto()
    reference.CopyFrom(work)
    write_weights(reference, refs, {name: np.where(mask_now[name], weights_in[name], np.float32(0.0))
                                    for name in weights_in if name not in refitted})
    feeds, feed_kind = verification_feeds(base, calibration, config.seed)
    try:
        reference_outputs = run_model(reference, feeds)
        input_outputs = run_model(base, feeds)
    except Exception as exc:  # onnxruntime raises its own exception classes
        raise VerificationError(
            f"cannot run the model on {feed_kind} to verify it ({str(exc)[:200]}); "
            "pass calibration data with real inputs"
        ) from None
    final, storage, outcome = _choose_storage(work, refs, current, config, feeds, reference_outputs)
    if outcome is None:  # dense storage: checked here (a sparse candidate was checked when chosen)
        outcome = check_candidate(final, feeds, reference_outputs)
    if not outcome.ok:
        raise VerificationError(f"the sparsified model {outcome.message}; nothing written")
    verification = VerificationReport(
        ok=True, inputs=feed_kind, output_change=relative_change(input_outputs, reference_outputs),
        message=f"{outcome.message} (input weights x mask{', re-fitted layers as fitted' if refitted else ''})",
    )
    layers = tuple(_layer_stats(ref, zeros_before[ref.name], current[ref.name], storage,
                                refit_status.get(ref.name, "no" if refitter is None else "not changed"))
                   for ref in refs)
    written = None
    if model_output is not None:
        written = save_model_atomic(final, model_output)
    all_notes = tuple(notes) + tuple(f"{n}: re-fit {s}" for n, s in refit_status.items() if s.startswith("skip"))
    return SparsifyResult(
        model=final, layers=layers, storage=storage, verification=verification,
        masks={name: m.copy() for name, m in mask_now.items()}, history=tuple(history), steps=steps,
        notes=all_notes, output_path=written,
    )


def _step_masks(threshold: float, refs: list[WeightRef], current: Mapping[str, np.ndarray],
                mask_now: Mapping[str, np.ndarray], start_masks: Mapping[str, np.ndarray],
                importance: Mapping[str, np.ndarray], config: SparsifyConfig,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The masks after one step at ``threshold``, for every weight."""
    def scores(name: str) -> np.ndarray:
        return importance[name] if name in importance else current[name]

    if config.scope == "global":
        names = [r.name for r in refs]
        flat_scores = np.concatenate([np.abs(scores(n).astype(np.float64)).reshape(-1) for n in names])
        flat_mask = np.concatenate([mask_now[n].reshape(-1) for n in names])
        start = np.concatenate([start_masks[n].reshape(-1) for n in names])
        target = _target(threshold, start.size, int(start.size - np.count_nonzero(start)), config.relative)
        new_flat = unstructured_mask(config.filler, flat_scores, flat_mask, target, rng, config.delta)
        out: dict[str, np.ndarray] = {}
        offset = 0
        for ref in refs:
            out[ref.name] = new_flat[offset:offset + ref.size].reshape(ref.shape)
            offset += ref.size
        return out
    out = {}
    for ref in refs:
        name = ref.name
        if config.filler == "ln":
            dead, slices = count_slices(start_masks[name], config.dim)
            target = _target(threshold, slices, dead, config.relative)
            out[name] = ln_structured_mask(scores(name), mask_now[name], config.dim, config.n, target)
        else:
            start_zeros = int(ref.size - np.count_nonzero(start_masks[name]))
            target = _target(threshold, ref.size, start_zeros, config.relative)
            out[name] = unstructured_mask(config.filler, scores(name), mask_now[name], target, rng,
                                          config.delta).reshape(ref.shape)
    return out


def _target(threshold: float, size: int, zeros_at_start: int, relative: bool) -> int:
    """Zeros the unit must hold: ceil(t*size), or for ``relative`` start zeros + ceil(t*remaining)."""
    if relative:
        return zeros_at_start + ceil_fraction(threshold, size - zeros_at_start)
    return ceil_fraction(threshold, size)


def _named_arrays(source: NamedArrays | None, refs: list[WeightRef], what: str,
                  config: SparsifyConfig) -> dict[str, np.ndarray]:
    """Masks or importance scores by weight name, checked against the weights they name."""
    if source is None:
        return {}
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InvalidArgumentError(f"{path}: no such {what} file")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(f"{path}: not a readable .npz of {what} ({exc})") from None
    elif isinstance(source, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in source.items()}
    else:
        raise InvalidArgumentError(f"{what} must be a dict of arrays or an .npz path, got {type(source).__name__}")
    by_name = {r.name: r for r in refs}
    out: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        ref = by_name.get(name)
        if ref is None:
            known = ", ".join(sorted(by_name)[:5])
            raise InvalidArgumentError(
                f"{what} given for {name!r}, which is not a weight being sparsified "
                f"(op types {', '.join(config.op_types)}, after --exclude); weights are e.g. {known}"
            )
        if tuple(array.shape) != ref.shape:
            raise InvalidArgumentError(
                f"{what} for {name!r} has shape {list(array.shape)} but the weight has shape {list(ref.shape)}"
            )
        if what == "mask":
            if array.dtype != bool and not np.isin(array, (0, 1)).all():
                raise InvalidArgumentError(f"mask for {name!r} must hold only 0 and 1 (1 = keep the weight)")
            out[name] = array.astype(bool)
        else:
            if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
                raise InvalidArgumentError(f"importance scores for {name!r} must be finite numbers")
            out[name] = array.astype(np.float64)
    return out


def _pass_record(config: SparsifyConfig, custom: Mapping[str, np.ndarray], importance: Mapping[str, np.ndarray],
                 refit: bool, steps: tuple[float, ...], refs: list[WeightRef], zeros_before: Mapping[str, int],
                 current: Mapping[str, np.ndarray]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "tool": "onnxprune.sparsify",
        "filler": "custom_mask" if custom else config.filler,
        "scope": config.scope,
        "mode": "static" if custom else config.mode,
        "steps": list(steps),
        "relative": config.relative,
        "importance_scores": bool(importance),
        "refit": refit,
        "layers": {r.name: [zeros_before[r.name], int(r.size - np.count_nonzero(current[r.name])), r.size,
                            list(r.shape)] for r in refs},
    }
    if not custom:
        record["threshold"] = config.threshold
        if config.filler == "iternonstruct":
            record["delta"] = config.delta
        if config.filler == "random":
            record["seed"] = config.seed
        if config.filler == "ln":
            record["n"] = "inf" if np.isinf(config.n) else config.n
            record["dim"] = config.dim
    return record


def _choose_storage(work: onnx.ModelProto, refs: list[WeightRef], current: Mapping[str, np.ndarray],
                    config: SparsifyConfig, feeds: Mapping[str, np.ndarray],
                    reference_outputs: list[np.ndarray]
                    ) -> tuple[onnx.ModelProto, StorageDecision, CheckOutcome | None]:
    """Sparse tensors where the file gets smaller and onnxruntime agrees bit for bit, dense otherwise.

    Returns the chosen model, the decision, and the check of the sparse model when it was chosen.
    """
    dense_bytes = work.ByteSize()
    if config.dense:
        return work, StorageDecision("dense", "--dense: ordinary dense initializers with zeros (masks made "
                                     "permanent, like torch's prune.remove)", dense_bytes, None), None
    candidates = [r.name for r in refs
                  if sparse_nbytes(np.count_nonzero(current[r.name])) + _SPARSE_OVERHEAD < 4 * r.size]
    if not candidates:
        return work, StorageDecision(
            "dense", "no weight is sparse enough: with the int64 indices ONNX requires, a sparse tensor is "
            "smaller only below 1/3 density (above 67% sparsity)", dense_bytes, None), None
    candidate = onnx.ModelProto()
    candidate.CopyFrom(work)
    write_weights(candidate, refs, {n: current[n] for n in candidates}, sparse=frozenset(candidates))
    sparse_bytes = candidate.ByteSize()
    if sparse_bytes >= dense_bytes:
        return work, StorageDecision(
            "dense", f"sparse storage would not be smaller ({sparse_bytes} vs {dense_bytes} bytes)",
            dense_bytes, sparse_bytes), None
    outcome = check_candidate(candidate, feeds, reference_outputs)
    if not outcome.ok:
        logger.warning("sparse storage rejected, writing dense: %s", outcome.message)
        return work, StorageDecision("dense", f"sparse storage rejected: {outcome.message}", dense_bytes,
                                     sparse_bytes), None
    return candidate, StorageDecision(
        "sparse", f"{len(candidates)} of {len(refs)} weights as ONNX sparse tensors: "
        f"{sparse_bytes} bytes instead of {dense_bytes}; {outcome.message}",
        dense_bytes, sparse_bytes, tuple(candidates)), outcome


def _layer_stats(ref: WeightRef, zeros_before: int, weight: np.ndarray, storage: StorageDecision,
                 refit: str) -> LayerStats:
    mask = weight != 0
    dead, channels = count_slices(mask, ref.out_axis)
    return LayerStats(
        name=ref.name, op_types=ref.op_types, nodes=ref.node_names, shape=ref.shape, size=ref.size,
        zeros_before=zeros_before, zeros_after=int(ref.size - np.count_nonzero(mask)), zero_channels=dead,
        channels=channels, storage="sparse" if ref.name in storage.sparse_tensors else "dense",
        source="constant" if ref.source in (CONSTANT, CONSTANT_SPARSE) else "initializer", refit=refit,
    )


def sparsity_info(model: ModelLike) -> SparsityInfo:
    """Per-layer sparsity (unstructured zeros and all-zero channels) and the recorded passes."""
    proto = load_model(model)
    refs, _ = find_weights(proto, SUPPORTED_OP_TYPES)
    history = read_history(proto)
    layers = []
    for ref in refs:
        weight = read_weight(proto, ref)
        mask = weight != 0
        dead, channels = count_slices(mask, ref.out_axis)
        per_pass: list[float | None] = []
        for record in history:
            entry = record.get("layers", {}).get(ref.name)
            per_pass.append(entry[1] / entry[2] if isinstance(entry, list) and len(entry) >= 3 and entry[2] else None)
        layers.append(LayerInfo(
            name=ref.name, op_types=ref.op_types, nodes=ref.node_names, shape=ref.shape, size=ref.size,
            zeros=int(ref.size - np.count_nonzero(mask)), zero_channels=dead, channels=channels,
            storage="sparse" if ref.source in (SPARSE_INITIALIZER, CONSTANT_SPARSE) else "dense",
            history=tuple(per_pass),
        ))
    return SparsityInfo(layers=tuple(layers), history=tuple(history), other_metadata=other_onnxprune_metadata(proto))


def save_masks(masks: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write masks (1 = kept) as an .npz keyed by weight name, readable back with ``masks=``."""
    out = check_output_path(path)
    arrays = {name: np.asarray(m, dtype=np.uint8) for name, m in masks.items()}
    with open(out, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    logger.info("wrote %d masks to %s", len(arrays), out)
    return out
