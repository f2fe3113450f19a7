"""Rows a run never calibrated on, streamed in batches through every model at once.

A measured figure is only as good as its rows: the first 2,000 rows of a
class-sorted file hold classes 0-3 only (a pruned ResNet-20 then looked
better than dense). So evaluation takes every row of an evaluation source,
or every row of the calibration file outside the rows calibration took
(:func:`onnxprune.calibration.spread_indices`), and streams them: one
batch is decoded at a time and each model's outputs are kept, never all
the inputs, so the memory is bounded by the outputs.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import onnx

from ..calibration import Preprocess, open_calibration, spread_indices
from ..calibration.dataset import with_model_size
from ..calibration.validate import fixed_batch, model_input_shapes
from ..runtime import make_session

LabelledBatch = tuple[dict[str, np.ndarray], Optional[np.ndarray]]


@dataclass
class HeldOut:
    """Where the evaluation rows come from; ``batches()`` streams them (a fresh pass each call)."""

    batches: Callable[[], Iterator[LabelledBatch]]
    description: Callable[[int], str]  # the count of rows evaluated -> what the report says


def _stream(reader) -> Iterator[LabelledBatch]:
    reader.rewind()
    while (item := reader.get_next_with_labels()) is not None:
        yield item


def _without_rows(items: Iterable[LabelledBatch], skip: np.ndarray, size: int,
                  drop_last: bool) -> Iterator[LabelledBatch]:
    """The rows of ``items`` whose running index is not in ``skip``, re-batched to ``size`` rows (only the
    last batch is shorter, and left out with ``drop_last``: a model that fixes its batch takes no other)."""
    offset = 0
    parts: list[LabelledBatch] = []
    count = 0
    for feeds, labels in items:
        n = next(iter(feeds.values())).shape[0]
        keep = ~np.isin(np.arange(offset, offset + n), skip)
        offset += n
        if keep.any():
            parts.append(({k: v[keep] for k, v in feeds.items()}, None if labels is None else labels[keep]))
            count += int(keep.sum())
        while count >= size:
            merged, parts, count = _merge(parts, size)
            yield merged
    if count and not drop_last:
        merged, _, _ = _merge(parts, count)
        yield merged


def _merge(parts: list[LabelledBatch], size: int) -> tuple[LabelledBatch, list[LabelledBatch], int]:
    """The first ``size`` rows of ``parts`` as one batch, the rest, and how many rows the rest holds."""
    names = list(parts[0][0])
    feeds = {k: np.concatenate([f[k] for f, _ in parts]) for k in names}
    labels = None if parts[0][1] is None else np.concatenate([y for _, y in parts])
    total = next(iter(feeds.values())).shape[0]
    head = ({k: v[:size] for k, v in feeds.items()}, None if labels is None else labels[:size])
    if total == size:
        return head, [], 0
    rest = ({k: v[size:] for k, v in feeds.items()}, None if labels is None else labels[size:])
    return head, [rest], total - size


def held_out(calibration_source: Any, eval_source: Any, model: onnx.ModelProto, *,
             preprocess: Optional[Preprocess], batch_size: int,
             calibration_limit: Optional[int]) -> Optional[HeldOut]:
    """All rows of ``eval_source``, else the rows of a calibration file or folder that calibration did not
    take (it took ``calibration_limit`` rows spread over it); None when there are none."""
    inputs = model_input_shapes(model)
    preprocess = with_model_size(preprocess, model)
    if eval_source is not None:
        reader = open_calibration(eval_source, inputs, preprocess=preprocess, batch_size=batch_size)
        return HeldOut(lambda: _stream(reader), lambda n: f"all {n} rows of the evaluation set")
    if calibration_source is None or not isinstance(calibration_source, (str, Path)):
        return None
    reader = open_calibration(calibration_source, inputs, preprocess=preprocess, batch_size=batch_size)
    total = reader.reader.source_samples  # as the calibration reader counted them, before a fixed batch drops any
    if calibration_limit is None or calibration_limit >= total:
        return None
    taken = spread_indices(total, calibration_limit)
    size = reader.reader.batch_size
    drop_last = fixed_batch(inputs) is not None
    return HeldOut(lambda: _without_rows(_stream(reader), taken, size, drop_last),
                   lambda n: f"{n} held-out rows of the calibration file (all but the {len(taken)} rows "
                             f"spread over it that calibration took)")


def outputs_of(models: Mapping[Hashable, onnx.ModelProto], batches: Iterable[LabelledBatch]
               ) -> tuple[dict[Hashable, list[list[np.ndarray]]], Optional[np.ndarray]]:
    """Every model's outputs (one list of arrays per batch), in one pass over ``batches``; and the labels."""
    sessions = {k: make_session(m) for k, m in models.items()}
    outs: dict[Hashable, list[list[np.ndarray]]] = {k: [] for k in models}
    labels: list[np.ndarray] = []
    for feeds, y in batches:
        for k, s in sessions.items():
            outs[k].append([np.asarray(v) for v in s.run(None, feeds)])
        if y is not None:
            labels.append(np.asarray(y))
    return outs, (np.concatenate(labels) if labels else None)
