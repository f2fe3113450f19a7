"""The one least-squares driver: a layer to fit, the rows sampled from it, the samples held back, the stream.

Channel recovery (:mod:`onnxprune.passes.recover`), the sensitivity curves
(:mod:`onnxprune.allocation.sensitivity`) and the sparsity re-fit
(:mod:`onnxprune.sparsity.refit`) differ in which layers they fit and which
solve they call (:func:`.solve.fit_toward`, :func:`.solve.fit_gram`,
:func:`.solve.masked_fit`), not in how the rows of a layer are found:

* a :class:`Site` is one layer (node, op, attributes, input and output
  tensor) with the rows it is fitted on: for a Conv, output positions
  sampled once (so many per sample, :meth:`Site.sample_per_sample`, or
  spread over every sample, :meth:`Site.sample_spread`), the same positions
  for its input rows (im2col) and its target rows; other layers take every
  row, or a spread sample of them;
* :func:`fit_samples`: the first samples fit, the rest (a fifth) are held
  back to judge every fit (:attr:`.solve.Fit.improves`);
* :func:`stream`: named tensors of a model, batch by batch (whole
  activations of every sample at once would not fit in memory);
  :class:`.segments.SegmentForward` evaluates a model piece by piece from
  cached activations instead, when every sample fits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import onnx

from ..errors import CalibrationError
from ..graph.subgraph import expose
from ..runtime import make_session
from .solve import Patches, conv_geometry

HELD_BACK = 0.2  # the fraction of samples held back from every fit
MIN_SAMPLES = 5  # below this many samples nothing is held back (the fit is judged on its own rows)


def fit_samples(n: int, held: float = HELD_BACK, min_samples: int = MIN_SAMPLES) -> int:
    """How many of ``n`` samples (the first ones) fit; the rest are held back. All of them when there are fewer
    than ``min_samples`` or nothing would be left to fit."""
    if n < min_samples:
        return n
    k = n - int(round(held * n))
    return k if k > 0 else n


@dataclass(kw_only=True)
class Site:
    """One layer to fit and the rows it is fitted on (every row when ``rows_n`` is None).

    ``rows_n`` is the sample of each sampled row (ascending), ``rows_p`` its
    position within the sample: row-major over the output's (H, W) for a
    Conv, over the axes between batch and features otherwise.
    """

    node: str
    op: str
    attrs: dict[str, Any] = field(default_factory=dict)
    input: str
    output: str
    rows_n: Optional[np.ndarray] = None
    rows_p: Optional[np.ndarray] = None
    out_hw: tuple[int, int] = (1, 1)

    def sample_per_sample(self, y: np.ndarray, samples: int, max_rows: int, rng: np.random.Generator) -> None:
        """A Conv's output positions, the same count in every sample: at most ``max_rows`` rows in all."""
        self.out_hw = (int(y.shape[2]), int(y.shape[3]))
        hw = self.out_hw[0] * self.out_hw[1]
        per = max(1, min(hw, max_rows // max(samples, 1)))
        flat = np.stack([rng.choice(hw, per, replace=False) for _ in range(samples)])
        self.rows_n = np.repeat(np.arange(samples), per)
        self.rows_p = flat.ravel()

    def sample_spread(self, y: np.ndarray, samples: int, count: int, rng: np.random.Generator) -> None:
        """``count`` rows drawn over every position of every sample (ascending)."""
        if self.op == "Conv":
            self.out_hw = (int(y.shape[2]), int(y.shape[3]))
            per_sample = self.out_hw[0] * self.out_hw[1]
        else:
            per_sample = int(np.prod(y.shape[1:-1], dtype=np.int64)) if y.ndim > 2 else 1
        total = samples * per_sample
        flat = np.sort(rng.choice(total, size=min(count, total), replace=False))
        self.rows_n = flat // per_sample
        self.rows_p = flat % per_sample

    def _local(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The sampled rows of samples start..start+n: (sample within the batch, position)."""
        i0, i1 = np.searchsorted(self.rows_n, [start, start + n])
        return self.rows_n[i0:i1] - start, self.rows_p[i0:i1]

    def targets(self, y: np.ndarray, start: int = 0) -> np.ndarray:
        """Rows [R, C] of ``y`` (the site's output, or a tensor of its shape; a batch from sample ``start``)."""
        if self.rows_n is None:
            return y.reshape(-1, y.shape[-1])
        n, p = self._local(start, y.shape[0])
        if self.op == "Conv":
            if (y.shape[2], y.shape[3]) != self.out_hw:
                raise CalibrationError("calibration samples of different spatial sizes cannot be re-fitted together")
            return y.reshape(y.shape[0], y.shape[1], -1)[n, :, p]
        return y.reshape(y.shape[0], -1, y.shape[-1])[n, p, :]

    def patches(self, x: np.ndarray, w_shape: Sequence[int], start: int = 0) -> Patches:
        """A Conv's input patches at the sampled positions of a batch from sample ``start``."""
        n, p = self._local(start, x.shape[0])
        geometry = conv_geometry(self.attrs, w_shape, x.shape)
        return Patches(x, geometry, n, p // self.out_hw[1], p % self.out_hw[1])

    def rows(self, x: np.ndarray, w_shape: Sequence[int] = (), start: int = 0) -> np.ndarray:
        """Input rows [R, features] of a batch from sample ``start``: im2col for a Conv (weight ``w_shape``)."""
        if self.op == "Conv":
            return self.patches(x, w_shape, start).rows()
        if self.rows_n is None:
            return x.reshape(-1, x.shape[-1])
        n, p = self._local(start, x.shape[0])
        return x.reshape(x.shape[0], -1, x.shape[-1])[n, p, :]

    def rows_before(self, sample: int, start: int, n: int, count: int) -> int:
        """How many of the ``count`` rows of a batch (samples start..start+n) belong to samples before ``sample``."""
        k = max(0, min(n, sample - start))
        if self.rows_n is None:
            return count // max(n, 1) * k
        local, _ = self._local(start, n)
        return int(np.searchsorted(local, k))


def stream(model: onnx.ModelProto, names: list[str], batches: Iterable[dict[str, np.ndarray]]
           ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """(first sample, end, {name: value}) per batch: the named tensors of ``model``, one batch at a time.

    A prefix of a several-input model reads only some inputs: the others are
    not fed.
    """
    sess = make_session(expose(model, names))
    wanted = {i.name for i in sess.get_inputs()}
    start = 0
    for feeds in batches:
        try:
            values = sess.run(names, {k: v for k, v in feeds.items() if k in wanted})
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception classes
            raise CalibrationError(f"the model does not run on the calibration data: {str(exc)[:300]}") from None
        n = next(iter(feeds.values())).shape[0]
        yield start, start + n, dict(zip(names, values))
        start += n
