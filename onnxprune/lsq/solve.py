"""The least-squares solves of training-free layer repair: im2col, ridge toward given weights, held-back checks.

Channel recovery (:mod:`onnxprune.passes.recover`), the sensitivity curves and the sparsity re-fit
(:mod:`onnxprune.sparsity.refit`) solve the same problem: a layer's input
rows X (im2col patches for a Conv, at a sample of output positions), the
output Y the *original* model computed there, and weights W0 to start from;
find W, b with X W' + b close to Y, but not far from W0:

    min  || X W' + b - Y ||^2 + lam || [W b] - [W0 b0] ||^2

The ridge pulls toward W0, not toward zero: a few hundred images cannot pin
down thousands of weights, and a fit pulled to zero would forget what the
layer knew. Every fit is judged on rows held back from it (whole samples,
never positions of a sample used for fitting) and kept only when it beats
the plain weights there (:attr:`Fit.improves`).

- :class:`ConvGeometry` / :func:`conv_geometry`: strides, dilations and
  the pads a Conv really applies (``auto_pad`` SAME_UPPER / SAME_LOWER /
  VALID resolved against the input size).
- :class:`Patches` / :func:`im2col`: the rows a Conv multiplies at given
  output positions, in the column order of ``W.reshape(C_out, -1)``.
- :func:`fit_toward`: dense fit whose ridge strength is chosen on the
  held-back rows from :data:`RIDGES`, all candidates from one
  eigendecomposition (:func:`ridge_path`), then refitted on every row.
- :class:`GramSystem` / :func:`fit_gram`: the same fit for any subset of
  the input features, from sums of the rows collected once.
- :func:`masked_fit`: per-output-channel fit constrained to a mask's
  support (zeros stay zero), the sparsity re-fit's solve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

# Candidate ridge strengths, relative to the mean diagonal of the (bias-augmented) Gram matrix A'A.
RIDGES = (1e-4, 1e-3, 1e-2, 1e-1)
# The strength used when no row is held back to choose one.
DEFAULT_RIDGE = 1e-3
# Masked systems up to this size are solved in one batched call.
_BATCHED_SOLVE_MAX = 64


# ------------------------------------------------------------------ im2col

@dataclass(frozen=True)
class ConvGeometry:
    """How a 2-D Conv walks its input: pads are (top, left, bottom, right), already resolved."""

    group: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def conv_geometry(attrs: Mapping[str, Any], w_shape: Sequence[int], x_shape: Sequence[int]) -> ConvGeometry:
    """The geometry of a 2-D Conv with weight ``w_shape`` on an input of ``x_shape`` (NCHW).

    ``auto_pad`` SAME_* pads so that the output is ceil(input / stride); the
    odd pixel goes at the end (SAME_UPPER) or the start (SAME_LOWER), as
    onnxruntime does. The input size is needed because SAME pads depend on it.
    """
    kh, kw = int(w_shape[2]), int(w_shape[3])
    strides = tuple(int(s) for s in attrs.get("strides", (1, 1)))
    dilations = tuple(int(d) for d in attrs.get("dilations", (1, 1)))
    auto_pad = _text(attrs.get("auto_pad", "NOTSET"))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(x_shape[2:4], (kh, kw), strides, dilations):
            out = -(-int(size) // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - int(size), 0)
            small = total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        pads = (begin[0], begin[1], end[0], end[1])
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    else:
        pads = tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0)))
    return ConvGeometry(int(attrs.get("group", 1)), (kh, kw), strides, dilations, pads)  # type: ignore[arg-type]


class Patches:
    """im2col of ``x`` [N, C, H, W] at sampled output positions: row r is what output (n[r], oy[r], ox[r]) sees.

    Pixels are laid out as rows (channels last) plus one zero row that every
    tap falling in the padding reads, so each sampled tap is one contiguous
    row gather; :meth:`rows` then takes any channel range (one group, or a
    batch of groups) without copying the input again.
    """

    def __init__(self, x: np.ndarray, geometry: ConvGeometry, n: np.ndarray, oy: np.ndarray,
                 ox: np.ndarray) -> None:
        samples, channels, height, width = x.shape
        self.channels = channels
        self.count = len(n)
        self.pixels = np.empty((samples * height * width + 1, channels), dtype=x.dtype)
        self.pixels[:-1] = x.transpose(0, 2, 3, 1).reshape(-1, channels)
        self.pixels[-1] = 0
        (kh, kw), (sh, sw), (dh, dw) = geometry.kernel, geometry.strides, geometry.dilations
        ii = (np.asarray(oy) * sh - geometry.pads[0])[:, None] + np.arange(kh) * dh  # [R, kh]
        jj = (np.asarray(ox) * sw - geometry.pads[1])[:, None] + np.arange(kw) * dw  # [R, kw]
        n = np.asarray(n)
        self.taps = []
        for a in range(kh):
            for b in range(kw):
                i, j = ii[:, a], jj[:, b]
                flat = (n * height + i) * width + j
                flat[(i < 0) | (i >= height) | (j < 0) | (j >= width)] = self.pixels.shape[0] - 1
                self.taps.append(flat)

    def rows(self, c0: int = 0, c1: Optional[int] = None) -> np.ndarray:
        """[R, (c1 - c0) * kh * kw]: input channels c0..c1, each with its kernel taps in row-major order."""
        c1 = self.channels if c1 is None else c1
        cols = np.empty((self.count, c1 - c0, len(self.taps)), dtype=self.pixels.dtype)
        for t, flat in enumerate(self.taps):
            cols[:, :, t] = self.pixels[flat, c0:c1]
        return cols.reshape(self.count, -1)


def im2col(x: np.ndarray, geometry: ConvGeometry, n: np.ndarray, oy: np.ndarray, ox: np.ndarray) -> np.ndarray:
    """Rows [R, C * kh * kw] of ``x`` at output positions (n, oy, ox); ``rows @ W.reshape(C_out, -1).T`` is the Conv."""
    return Patches(x, geometry, n, oy, ox).rows()


# ------------------------------------------------------------------ held-back rows

def holdout(n_rows: int, n_fit: int) -> tuple[slice, slice]:
    """(fit rows, held-back rows) for rows ordered by sample, the first ``n_fit`` for fitting.

    With nothing held back the fit is judged on its own rows: the rule "keep
    only what beats the plain weights" then still rejects a fit that the
    ridge or rounding made worse.
    """
    fit = slice(0, n_fit)
    return fit, (slice(n_fit, None) if n_fit < n_rows else fit)


@dataclass(frozen=True)
class Fit:
    """A fitted layer as [C_out, features] weights and a bias, with its held-back errors."""

    weight: np.ndarray
    bias: np.ndarray
    err_fit: float  # mean squared error of the fit on the held-back rows
    err_plain: float  # the same for the starting weights
    ridge: float  # relative strength used

    @property
    def improves(self) -> bool:
        """Whether the fit is worth keeping: strictly better than the plain weights on held-back rows."""
        return self.err_fit < self.err_plain


# ------------------------------------------------------------------ dense fit

def ridge_path(gram: np.ndarray, rhs: np.ndarray, prior: np.ndarray, ridges: Sequence[float],
               rows_val: np.ndarray, y_val: np.ndarray) -> Optional[tuple[np.ndarray, float, float]]:
    """Solutions of (G + lam I) X = A'Y + lam W0' for each relative ridge; the best on (rows_val, y_val).

    One eigendecomposition G = Q diag(e) Q' serves every candidate, since
    (G + lam I)^-1 = Q diag(1 / (e + lam)) Q'. lam is the relative ridge
    times the mean diagonal of G. Returns (solution [F, C_out], held-back
    MSE, relative ridge), or None when no candidate gives finite weights.
    """
    evals, q = np.linalg.eigh(gram)
    scale = float(np.trace(gram)) / gram.shape[0]
    best = None
    for r in ridges:
        lam = r * scale + 1e-12
        sol = q @ ((q.T @ (rhs + lam * prior.T)) / (evals + lam)[:, None])
        if not np.isfinite(sol).all():
            continue
        err = float(((rows_val @ sol - y_val) ** 2).mean())
        if best is None or err < best[1]:
            best = (sol, err, r)
    return best


def fit_toward(rows: np.ndarray, target: np.ndarray, w0: np.ndarray, b0: np.ndarray, n_fit: int,
               ridge: Optional[float] = None, ridges: Sequence[float] = RIDGES) -> Optional[Fit]:
    """Ridge least squares of ``target`` [R, C_out] on ``rows`` [R, F] plus a bias, toward (w0 [C_out, F], b0).

    The first ``n_fit`` rows fit, the rest are held back. ``ridge=None``
    picks the strength from ``ridges`` by the held-back error, then refits
    on every row with it: too weak over-fits a few hundred images, too
    strong forgets what the fit should repair, and the right point differs
    from layer to layer. Without held-back rows it uses DEFAULT_RIDGE.
    Returns None when the system cannot be solved.
    """
    a = np.concatenate([rows, np.ones((rows.shape[0], 1), rows.dtype)], axis=1).astype(np.float64)
    y = target.astype(np.float64)
    prior = np.concatenate([w0, b0[:, None]], axis=1).astype(np.float64)  # [C_out, F+1]
    fit, hold = holdout(a.shape[0], n_fit)
    held = hold is not fit
    candidates = (tuple(ridges) if held else (DEFAULT_RIDGE,)) if ridge is None else (ridge,)
    a_fit, y_fit, a_val, y_val = a[fit], y[fit], a[hold], y[hold]
    try:
        best = ridge_path(a_fit.T @ a_fit, a_fit.T @ y_fit, prior, candidates, a_val, y_val)
        if best is None:
            return None
        sol, err_fit, chosen = best
        if held and ridge is None:  # the chosen strength, refitted on every row
            again = ridge_path(a.T @ a, a.T @ y, prior, (chosen,), a_val, y_val)
            if again is None:
                return None
            sol = again[0]
    except np.linalg.LinAlgError:
        return None
    err_plain = float(((a_val @ prior.T - y_val) ** 2).mean())
    return Fit(sol[:-1].T.astype(np.float32), sol[-1].astype(np.float32), err_fit, err_plain, chosen)


# ------------------------------------------------------------------ fits from Gram matrices

class GramSystem:
    """A'A, A'Y and Y'Y of one layer's rows (a ones column appended for the bias), fit and held-back apart.

    Sensitivity curves re-fit the same layer for many subsets of its input
    channels; the rows of a subset are columns of the full rows, so every
    subset's fit is a sub-matrix of these sums and the rows are read once.
    """

    def __init__(self, features: int, outputs: int) -> None:
        size = features + 1
        self.gram = {k: np.zeros((size, size)) for k in ("fit", "val")}
        self.rhs = {k: np.zeros((size, outputs)) for k in ("fit", "val")}
        self.yy = {k: 0.0 for k in ("fit", "val")}
        self.rows = {k: 0 for k in ("fit", "val")}

    def add(self, rows: np.ndarray, target: np.ndarray, held: bool) -> None:
        """Accumulate rows [R, F] and their targets [R, C_out], as held-back rows when ``held``."""
        k = "val" if held else "fit"
        a = np.concatenate([rows, np.ones((rows.shape[0], 1), rows.dtype)], axis=1).astype(np.float64)
        y = target.astype(np.float64)
        self.gram[k] += a.T @ a
        self.rhs[k] += a.T @ y
        self.yy[k] += float((y ** 2).sum())
        self.rows[k] += rows.shape[0]


def fit_gram(system: GramSystem, cols: np.ndarray, w0: np.ndarray, b0: np.ndarray,
             ridges: Sequence[float] = RIDGES) -> Optional[Fit]:
    """:func:`fit_toward` restricted to the feature columns ``cols``, from the sums of ``system``.

    Same rule: the ridge strength is chosen on the held-back rows, the fit
    is then redone on every row; errors are mean squared errors on the
    held-back rows (of the fit and of the plain weights ``w0[:, cols]``).
    """
    idx = np.concatenate([np.asarray(cols, dtype=np.int64), [system.gram["fit"].shape[0] - 1]])
    sub = np.ix_(idx, idx)
    prior = np.concatenate([w0[:, cols], b0[:, None]], axis=1).astype(np.float64)  # [C_out, F'+1]
    gv, rv = system.gram["val"][sub], system.rhs["val"][idx]
    n_val = max(system.rows["val"] * prior.shape[0], 1)

    def val_err(sol: np.ndarray) -> float:
        return float((sol * (gv @ sol - 2 * rv)).sum() + system.yy["val"]) / n_val

    def solve(gram: np.ndarray, rhs: np.ndarray, ridge: float) -> np.ndarray:
        lam = ridge * float(np.trace(gram)) / gram.shape[0] + 1e-12
        return np.linalg.solve(gram + lam * np.eye(gram.shape[0]), rhs + lam * prior.T)

    if system.rows["val"] == 0:
        return None
    try:
        gf, rf = system.gram["fit"][sub], system.rhs["fit"][idx]
        errs = [(val_err(s), r) for r in ridges for s in [solve(gf, rf, r)] if np.isfinite(s).all()]
        if not errs:
            return None
        err_fit, chosen = min(errs)
        sol = solve(gf + gv, rf + rv, chosen)
    except np.linalg.LinAlgError:
        return None
    return Fit(sol[:-1].T.astype(np.float32), sol[-1].astype(np.float32), err_fit, val_err(prior.T), chosen)


# ------------------------------------------------------------------ masked fit

def masked_fit(rows: np.ndarray, y: np.ndarray, mask: np.ndarray, w0: np.ndarray, b0: Optional[np.ndarray],
               ridge: float) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Ridge least squares per output channel on its mask support, pulled toward (w0, b0).

    rows [g, R, D], y [g, R, Mg], mask / w0 [g, Mg, D], b0 [g, Mg] or None
    (no bias). Per group g, H = A'A + lam I with lam = ridge * mean(diag(A'A))
    over the weight coordinates; each channel solves H_SS x_S = (A'y +
    lam * prior)_S on its support S and is 0 elsewhere. Small systems
    (depthwise) go in one batched call; large ones solve on S, or, when fewer
    weights are pruned than kept, through H^-1 and the pruned set P only
    (x = H^-1 r - H^-1[:, P] (H^-1[P, P])^-1 (H^-1 r)[P]), which is the same
    solution at a fraction of the cost at low sparsity. The Gram products
    are float32 (the bulk of the cost), the solves float64.
    """
    groups, _, dim = rows.shape
    with_bias = b0 is not None
    size = dim + int(with_bias)
    rows_t = rows.transpose(0, 2, 1)
    gram = np.zeros((groups, size, size))
    gram[:, :dim, :dim] = np.matmul(rows_t, rows)
    rhs = np.zeros((groups, size, y.shape[2]))
    rhs[:, :dim] = np.matmul(rows_t, y.astype(np.float32))
    keep = mask.astype(np.float64)
    prior = w0
    if with_bias:
        sums = rows.sum(axis=1, dtype=np.float64)
        gram[:, dim, :dim] = sums
        gram[:, :dim, dim] = sums
        gram[:, dim, dim] = rows.shape[1]
        rhs[:, dim] = y.sum(axis=1, dtype=np.float64)
        keep = np.concatenate([keep, np.ones(keep.shape[:2] + (1,))], axis=2)
        prior = np.concatenate([w0, np.asarray(b0, dtype=np.float64)[..., None]], axis=2)
    mean_diag = np.diagonal(gram, axis1=1, axis2=2)[:, :dim].mean(axis=1)  # [g]
    lam = ridge * mean_diag + 1e-9 * (1.0 + mean_diag)
    idx = np.arange(size)
    gram[:, idx, idx] += lam[:, None]  # gram is H from here on
    target = (rhs.transpose(0, 2, 1) + lam[:, None, None] * prior) * keep  # [g, Mg, size]
    if size <= _BATCHED_SOLVE_MAX:
        # Pruned coordinates become identity rows with a zero right-hand side: they solve to 0.
        lhs = gram[:, None] * keep[..., :, None] * keep[..., None, :]
        lhs[..., idx, idx] += 1.0 - keep
        sol = np.linalg.solve(lhs, target[..., None])[..., 0] * keep
    else:
        sol = np.zeros_like(target)
        for g in range(groups):
            _solve_group(gram[g], target[g], keep[g], sol[g])
    return sol[..., :dim], (sol[..., dim] if with_bias else None)


def _solve_group(h: np.ndarray, target: np.ndarray, keep: np.ndarray, out: np.ndarray) -> None:
    """Each channel o of one group: H_SS x_S = target_S, written into ``out[o]``."""
    inverse = free = None
    for o in range(keep.shape[0]):
        support = np.flatnonzero(keep[o])
        pruned = np.flatnonzero(keep[o] == 0)
        if support.size == 0:
            continue
        if pruned.size < support.size:
            if inverse is None:
                inverse = np.linalg.inv(h)
                free = inverse @ target.T  # unconstrained solutions of every channel, [size, Mg]
            x = free[:, o].copy()
            if pruned.size:
                x -= inverse[:, pruned] @ np.linalg.solve(inverse[np.ix_(pruned, pruned)], x[pruned])
                x[pruned] = 0.0
            out[o] = x
        else:
            lhs = h[np.ix_(support, support)]
            try:
                out[o, support] = np.linalg.solve(lhs, target[o, support])
            except np.linalg.LinAlgError:
                out[o, support] = np.linalg.lstsq(lhs, target[o, support], rcond=None)[0]


def sq_error(rows: np.ndarray, y: np.ndarray, w: np.ndarray, b: Optional[np.ndarray]) -> float:
    """Sum of squared errors of rows [g, R, D] @ w [g, M, D]' + b [g, M] against y [g, R, M]."""
    pred = np.matmul(rows.astype(np.float64), w.transpose(0, 2, 1))
    if b is not None:
        pred += b[:, None, :]
    return float(np.sum((pred - y) ** 2))
