"""``sparsify``: zero a fraction of the weights, verify, store sparse where it pays.

The pipeline: load (the input is never modified) -> find the Conv / Gemm /
MatMul weights and check the given masks / scores against them
(:func:`~onnxprune.sparsity.masks.select_weights`) -> read the calibration
data (the same sources ``prune_static`` takes) -> ``Pipeline([SparsifyPass,
SparseStoragePass])`` (:mod:`onnxprune.sparsity.passes`: masks of earlier
passes are the zeros already there; each step of the schedule zeros more
survivors, optionally re-fitted by least squares; exactness against the
input weights x mask; sparse tensors only where the file gets smaller *and*
onnxruntime gives identical outputs) -> write atomically.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import onnx

from ..calibration import Preprocess, load_calibration
from ..errors import InvalidArgumentError
from ..graph.io import ModelLike, check_output_path, load_model, save_model_atomic
from ..passes.base import Pipeline
from .passes import SparseStoragePass, SparsifyPass, verification_feeds
from .config import SUPPORTED_OP_TYPES, SparsifyConfig
from .fillers import count_slices
from .history import other_onnxprune_metadata, read_history
from .masks import NamedArrays, select_weights
from .results import LayerStats, SparsifyResult, SparsityInfo, StorageDecision, VerificationReport, WeightInfo
from .weights import CONSTANT, CONSTANT_SPARSE, SPARSE_INITIALIZER, WeightRef, find_weights, read_weight

logger = logging.getLogger(__name__)

# A folder of images, an .npy/.npz path, arrays or a dict of them, a reader with get_next(), an iterable of dicts.
CalibrationData = Union[np.ndarray, Mapping[str, np.ndarray], Iterable[Mapping[str, np.ndarray]], str, os.PathLike, Any]


def collect_calibration(data: CalibrationData, model: onnx.ModelProto, max_samples: int,
                        preprocess: Optional[Preprocess] = None) -> dict[str, np.ndarray]:
    """Up to ``max_samples`` samples per model input, one array each, read by :func:`load_calibration`.

    The one calibration path of every command: anything ``prune_static``
    takes, checked against the model's inputs, ``preprocess`` (or the size
    the model records) for image folders and uint8 arrays, float16 inputs
    cast for a float16 model, the cache's memory budget.
    """
    feeds = load_calibration(data, model, preprocess=preprocess, limit=max_samples).feeds()
    return {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}


def sparsify(model_input: ModelLike, model_output: str | os.PathLike | None = None,
             config: SparsifyConfig | None = None, calibration_data_reader: CalibrationData | None = None,
             masks: NamedArrays | None = None, importance_scores: NamedArrays | None = None, *,
             preprocess: Optional[Preprocess] = None) -> SparsifyResult:
    """Zero a fraction of the Conv/Gemm/MatMul weights of ``model_input``.

    ``masks`` (torch's custom_from_mask, N2D2's mask files) and
    ``importance_scores`` map weight names to arrays of the weight's shape, or
    name an ``.npz`` holding them. With ``masks`` the filler is not used: the
    given masks are combined with those already in the model.
    ``calibration_data_reader`` takes what ``prune_static`` takes (a folder of
    images, an .npy/.npz of uint8 images or float inputs, an onnxruntime
    CalibrationDataReader, arrays, an iterable of feed dicts), with
    ``preprocess`` for images; it turns on the least-squares re-fit of the
    surviving weights after each step and is the verification input.
    Writes ``model_output`` atomically, only after every check passed.
    """
    config = config if config is not None else SparsifyConfig()
    if not isinstance(config, SparsifyConfig):
        raise InvalidArgumentError(f"config must be a SparsifyConfig, got {type(config).__name__}")
    input_path = None if isinstance(model_input, onnx.ModelProto) else model_input
    if model_output is not None:
        check_output_path(model_output, input_path)
    source = load_model(model_input)
    targets = select_weights(source, config, masks, importance_scores)
    calibration = None
    if calibration_data_reader is not None and config.refit:
        calibration = collect_calibration(calibration_data_reader, source, config.refit_samples, preprocess)
    feeds, feed_kind = verification_feeds(source, calibration)
    run = Pipeline([SparsifyPass(config, targets, calibration, feeds=feeds, feed_kind=feed_kind),
                    SparseStoragePass(targets.names, dense=config.dense, feeds=feeds)])(source)
    done = run.result_of("sparsify")
    storage: StorageDecision = run.result_of("sparse-storage").storage
    verification = VerificationReport(ok=True, message=done.verification.summary(), inputs=feed_kind,
                                      output_change=done.output_change)
    weights, status = done.weights, done.refit_status
    layers = tuple(_layer_stats(ref, done.zeros_before[ref.name], weights[ref.name], storage,
                                status.get(ref.name, "not changed" if done.refit else "no"))
                   for ref in targets.refs)
    written = save_model_atomic(run.model, model_output) if model_output is not None else None
    return SparsifyResult(
        model=run.model, layers=layers, storage=storage, verification=verification,
        masks={name: m.copy() for name, m in done.masks.items()}, history=done.history, steps=done.steps,
        notes=targets.notes + done.notes, output_path=written,
    )


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
        layers.append(WeightInfo(
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
