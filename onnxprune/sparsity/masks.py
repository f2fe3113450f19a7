"""Which weights a sparsify run prunes, and the masks each step of its schedule gives them.

``select_weights`` checks everything the user gave against the model once
(weights found, masks and importance scores of the right names and shapes,
the ln filler's axis) and raises InvalidArgumentError before any work; the
pass then only computes. A mask is 1 where a weight is kept; a step's new
mask is always a subset of the current one (a pruned weight stays pruned).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import onnx

from ..errors import InvalidArgumentError, NothingToPruneError
from .config import SparsifyConfig, ceil_fraction
from .fillers import count_slices, ln_structured_mask, unstructured_mask
from .weights import WeightRef, find_weights

NamedArrays = Union[Mapping[str, np.ndarray], str, os.PathLike]


@dataclass(frozen=True)
class WeightTargets:
    """The weights to sparsify, in topological order, and the masks / scores given for them."""

    refs: tuple[WeightRef, ...]
    notes: tuple[str, ...] = ()
    masks: Mapping[str, np.ndarray] = field(default_factory=dict)  # explicit masks: no filler
    importance: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.refs)


def select_weights(model: onnx.ModelProto, config: SparsifyConfig, masks: NamedArrays | None = None,
                   importance_scores: NamedArrays | None = None) -> WeightTargets:
    """The weights of ``model`` that ``config`` prunes, with the given masks / scores checked against them."""
    refs, notes = find_weights(model, config.op_types, config.nodes_to_exclude)
    if not refs:
        raise NothingToPruneError(
            f"no float32 weight of a {'/'.join(config.op_types)} node to sparsify"
            + (f" ({'; '.join(notes)})" if notes else "")
            + "; check --op-types and --exclude"
        )
    custom = _named_arrays(masks, refs, "mask", config)
    importance = _named_arrays(importance_scores, refs, "importance scores", config)
    if custom and config.mode == "gradual":
        raise InvalidArgumentError("explicit masks are applied at once; drop --steps / --gradual-start with masks")
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
    return WeightTargets(tuple(refs), tuple(notes), custom, importance)


def step_masks(threshold: float, refs: list[WeightRef], current: Mapping[str, np.ndarray],
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
                f"(op types {', '.join(config.op_types)}, after nodes_to_exclude / --exclude); weights are e.g. {known}"
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
