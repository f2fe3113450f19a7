"""The distillation loop: the dense model (onnxruntime) teaches the pruned one (torch) on unlabeled rows.

Every step counts on a 2-core machine: the dense model's outputs and feature
maps on the un-augmented rows are computed once and cached (within
``CACHE_BYTES``); augmented batches (random-resized crop + flip, NCHW image
inputs only) get theirs on the fly. The loss is the run's damage measure in
torch (:mod:`.loss`: KL of logits, the detection cost, per-feature errors, ...),
plus ``feature_weight`` times the normalised error at the outputs of the
re-fitted layers (full width in both graphs, the tensors least squares aimed
at). Adam, cosine decay over the steps that fit the wall-clock budget. After
each epoch the weights are judged on the held-back rows: the epoch with the
lowest held-back distillation loss is returned (its headline fidelity, the
run's one measure, is reported beside it), stopping early after
``patience`` epochs without a lower one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import onnx

from ..errors import InvalidArgumentError
from ..progress import format_seconds
from .engine import Student, write_back
from .loss import feature_map_loss, output_loss
from .settings import DistillSettings

logger = logging.getLogger(__name__)
progress_log = logging.getLogger("onnxprune.progress")

CACHE_BYTES = 512 << 20
AUGMENT_PROBABILITY = 1.0  # every batch: the teacher labels each new crop, the only guard a few hundred rows have
CROP_SCALE = (0.35, 1.0)


@dataclass
class EpochPoint:
    """One point of the curve: after ``epoch`` epochs and ``seconds`` of training, the held-back figures."""

    epoch: int
    seconds: float
    fidelity: float
    loss: float


@dataclass
class Outcome:
    """The best weights found (by initializer name) and how they compare with the starting ones."""

    best: dict[str, np.ndarray]
    best_epoch: int
    baseline: Any  # Fidelity of the starting (least-squares) weights
    best_fidelity: Any
    baseline_loss: float
    best_loss: float
    steps: int
    wall_s: float
    cpu_s: float
    stopped: str
    curve: list[EpochPoint] = field(default_factory=list)

    @property
    def improved(self) -> bool:
        return self.best_epoch > 0


def headline_text(fid: Any, value: Optional[float] = None) -> str:
    """'top-1 agreement 84.4%': the task's headline figure of a Fidelity (or ``value`` in its terms)."""
    from ..fidelity.measure import LABELS, _fmt
    v = fid.value if value is None else value
    return f"{LABELS.get(fid.headline, fid.headline)} {_fmt(fid.headline, v)}"


def _as_input(a: np.ndarray) -> np.ndarray:
    """Float inputs as float32 (the module trains in float32); integer inputs (token ids, masks) unchanged."""
    a = np.asarray(a)
    return a if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_ else a.astype(np.float32)


def _is_image(arrays: dict[str, np.ndarray]) -> bool:
    if len(arrays) != 1:
        return False
    a = next(iter(arrays.values()))
    return a.ndim == 4 and a.shape[1] in (1, 3) and a.shape[2] >= 8 and a.shape[3] >= 8 and \
        np.issubdtype(a.dtype, np.floating)


def augment_batch(x: np.ndarray, rng: np.random.Generator, flip: bool = True) -> np.ndarray:
    """Random-resized crop (area 35-100%, aspect 3/4-4/3 of the input's own) and, with ``flip``, a horizontal
    flip of each NCHW image, same size out.

    The aspect is relative to the input's: a 48 x 320 text line gets crops of about that shape, not squares
    stretched fourfold. No flip where an output is read in order (CTC text): a mirrored line is not a line."""
    import torch
    import torch.nn.functional as F
    n, _, h, w = x.shape
    out = np.empty_like(x)
    t = torch.from_numpy(np.ascontiguousarray(x))
    for i in range(n):
        area = h * w * rng.uniform(*CROP_SCALE)
        ratio = (w / h) * math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        ch = int(min(h, max(1, round(math.sqrt(area / ratio)))))
        cw = int(min(w, max(1, round(math.sqrt(area * ratio)))))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = t[i:i + 1, :, top:top + ch, left:left + cw]
        img = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0]
        if flip and rng.random() < 0.5:
            img = img.flip(-1)
        out[i] = img.numpy()
    return out


class _Teacher:
    """The dense model's outputs (and feature maps) on a batch; cached for the un-augmented rows."""

    def __init__(self, dense: onnx.ModelProto, names: list[str], features: list[str], n_rows: int) -> None:
        from ..graph.subgraph import expose
        from ..runtime import make_session
        self.session = make_session(expose(dense, features) if features else dense)
        self.names = names + features
        self.cache: dict[int, list[np.ndarray]] = {}
        self.cache_ok = True
        self.n_rows = n_rows

    def run(self, feed: dict[str, np.ndarray], rows: Optional[np.ndarray]) -> list[np.ndarray]:
        if rows is not None and all(int(r) in self.cache for r in rows):
            return [np.stack([self.cache[int(r)][k] for r in rows]) for k in range(len(self.names))]
        outs = [np.asarray(y) for y in self.session.run(self.names, feed)]
        if rows is not None and self.cache_ok:
            per_row = sum(o.nbytes for o in outs) / max(len(rows), 1)
            if per_row * self.n_rows <= CACHE_BYTES:
                for j, r in enumerate(rows):
                    self.cache[int(r)] = [o[j] for o in outs]
            else:
                self.cache_ok = False
        return outs


def cpu_threads(default: int) -> int:
    """Torch's threads: one when the machine is already busy (load average >= cores). Measured on a loaded
    2-core machine: a ResNet-56 step took 1.7 s on one thread and 16-22 s on two (spinning threads contend)."""
    import os
    try:
        busy = os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:
        busy = False
    if busy and default > 1:
        logger.info("machine busy (load average >= cores): training on one thread")
        return 1
    return default


class _Adam:
    """Adam (Kingma & Ba), the update written out: every ``torch.optim`` step imports ``torch._dynamo`` on its
    first call, 5-15 s on a loaded 2-core machine, for a run that may be given a minute."""

    def __init__(self, params: list, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        import torch
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        import torch
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        with torch.no_grad():
            for p, m, v in zip(self.params, self.m, self.v):
                if p.grad is None:
                    continue
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-self.lr / c1)


class _Average:
    """An exponential moving average of the weights (Polyak averaging): the small-batch steps of a run on a few
    hundred rows are noisy, and the average of the last steps generalises better than the last step."""

    def __init__(self, params: list, decay: float) -> None:
        self.decay, self.steps = decay, 0
        self.values = [p.detach().clone() for p in params]

    def update(self, params: list) -> None:
        """Average in the current weights; the decay ramps up over the first steps (as TensorFlow's
        ExponentialMovingAverage with num_updates) so a short run is not held at its starting weights."""
        import torch
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        with torch.no_grad():
            for a, p in zip(self.values, params):
                a.mul_(d).add_(p.detach(), alpha=1 - d)

    def swap_in(self, params: list) -> list:
        """Put the averages into ``params``; returns the live values for :meth:`restore`."""
        import torch
        live = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, a in zip(params, self.values):
                p.copy_(a)
        return live

    @staticmethod
    def restore(params: list, live: list) -> None:
        import torch
        with torch.no_grad():
            for p, v in zip(params, live):
                p.copy_(v)


class Trainer:
    """One distillation run; :meth:`run` returns the :class:`Outcome`."""

    def __init__(self, student: Student, dense: onnx.ModelProto, pruned: onnx.ModelProto,
                 arrays: dict[str, np.ndarray], judge: Any, settings: DistillSettings, dev: str,
                 features: Sequence[str] = (),
                 on_epoch: Optional[Callable[[EpochPoint, dict[str, np.ndarray]], None]] = None) -> None:
        self.on_epoch = on_epoch  # sees each epoch's point and weights (benchmarks measure them on unseen data)
        self.student, self.pruned, self.judge, self.s, self.dev = student, pruned, judge, settings, dev
        self.arrays = {k: _as_input(arrays[k]) for k in student.input_names}
        self.n = len(next(iter(self.arrays.values())))
        self.features = [f for f in features if f in student.targets] if settings.feature_weight > 0 else []
        self.specs = list(judge.spec.outputs) if len(judge.spec.outputs) == len(student.output_names) \
            else [None] * len(student.output_names)
        self.conf = judge.spec.conf
        self.teacher = _Teacher(dense, student.output_names, self.features, self.n)
        self.image = settings.augment and _is_image(self.arrays)
        self.flip = not any(s is not None and s.kind == "sequence" for s in self.specs)  # reading order matters
        self.rng = np.random.default_rng(settings.seed)
        self._captured: dict[str, Any] = {}

    def _tensors(self, feed: dict[str, np.ndarray]) -> list:
        import torch
        return [torch.from_numpy(np.ascontiguousarray(feed[k])).to(self.dev) for k in self.student.input_names]

    def _hooks(self) -> list:
        handles = []
        for name in self.features:
            mod = self.student.module.get_submodule(self.student.targets[name])

            def hook(_m, _i, out, name=name):
                self._captured[name] = out
            handles.append(mod.register_forward_hook(hook))
        return handles

    def _output_terms(self, outs: list, teacher: list[np.ndarray]):
        """The mean over the model's float outputs of each one's task loss (:mod:`.loss`) against the teacher."""
        import torch
        terms = [output_loss(spec, s, torch.from_numpy(t).to(self.dev), self.s.temperature, self.conf)
                 for spec, s, t in zip(self.specs, outs, teacher)
                 if getattr(spec, "kind", None) != "ignored" and s.is_floating_point()]
        return sum(terms) / max(len(terms), 1)

    def _loss(self, feed: dict[str, np.ndarray], teacher: list[np.ndarray]):
        import torch
        self._captured.clear()
        outs = self.student.forward(self._tensors(feed))
        k = len(outs)
        loss = self._output_terms(outs, teacher[:k])
        feats = [feature_map_loss(self._captured[f], torch.from_numpy(t).to(self.dev))
                 for f, t in zip(self.features, teacher[k:]) if f in self._captured]
        if feats:
            loss = loss + self.s.feature_weight * sum(feats) / len(feats)
        return loss

    def held_back_loss(self) -> float:
        """The output term of the loss on the judge's rows against the dense outputs there (ties of the measure)."""
        import torch
        total, rows = 0.0, 0
        with torch.no_grad():
            for feed, ref in zip(self.judge.feeds, self.judge.reference):
                outs = self.student.forward(self._tensors(feed))
                n = len(next(iter(feed.values())))
                total += float(self._output_terms(outs, [np.asarray(r) for r in ref])) * n
                rows += n
        return total / max(rows, 1)

    def _judge(self) -> tuple[Any, float]:
        return self.judge.measure(write_back(self.pruned, self.student.state())), self.held_back_loss()

    def check_budget(self) -> None:
        """One clear line when the budget cannot hold one training step (about 3 forward passes of a batch)."""
        import torch
        rows = np.arange(min(self.s.batch, self.n))
        feed = {k: v[rows] for k, v in self.arrays.items()}
        t0 = time.monotonic()
        with torch.no_grad():
            self.student.forward(self._tensors(feed))
        need = 3 * (time.monotonic() - t0)
        if need > self.s.time_s:
            raise InvalidArgumentError(f"--distill-time {self.s.time_s:g}s is too small for one training step "
                                       f"(about {need:.1f}s here at batch {len(rows)}); give it at least "
                                       f"{math.ceil(need * max(1, math.ceil(self.n / self.s.batch)))}s for an epoch")

    def run(self) -> Outcome:
        import torch
        threads = torch.get_num_threads()
        if self.dev == "cpu":
            torch.set_num_threads(cpu_threads(threads))
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> Outcome:
        import torch
        s = self.s
        torch.manual_seed(s.seed)
        start, cpu0 = time.monotonic(), time.process_time()
        deadline = start + s.time_s
        baseline, base_loss = self._judge()
        best = (base_loss, 0, self.student.state(), baseline, base_loss)
        curve = [EpochPoint(0, 0.0, baseline.value, base_loss)]
        progress_log.info("distill: least squares start: held-back %s, loss %.4f", headline_text(baseline),
                          base_loss)
        params = self.student.parameters()
        opt = _Adam(params, s.lr)
        average = _Average(params, s.ema) if s.ema > 0 else None
        per_epoch = max(1, math.ceil(self.n / s.batch))
        horizon, step, stopped, since_best = s.epochs * per_epoch, 0, "all epochs", 0
        handles = self._hooks()
        train_start = time.monotonic()
        try:
            for epoch in range(1, s.epochs + 1):
                order = self.rng.permutation(self.n)
                for b in range(per_epoch):
                    if time.monotonic() >= deadline:
                        stopped = "the time budget"
                        break
                    rows = np.sort(order[b * s.batch:(b + 1) * s.batch])
                    feed = {k: v[rows] for k, v in self.arrays.items()}
                    aug = self.image and self.rng.random() < AUGMENT_PROBABILITY
                    if aug:
                        feed = {k: augment_batch(v, self.rng, self.flip) for k, v in feed.items()}
                    teacher = self.teacher.run(feed, None if aug else rows)
                    opt.lr = s.lr * 0.5 * (1 + math.cos(math.pi * min(step, horizon) / horizon))
                    opt.zero_grad()
                    loss = self._loss(feed, teacher)
                    loss.backward()
                    opt.step()
                    if average is not None:
                        average.update(params)
                    step += 1
                    if step == 3 or (step > 3 and step % per_epoch == 0):  # cosine over the steps that fit
                        rate = (time.monotonic() - train_start) / step
                        left = max(0.0, deadline - time.monotonic())
                        horizon = max(step + 1, min(s.epochs * per_epoch, step + int(left / max(rate, 1e-9))))
                live = average.swap_in(params) if average is not None else None  # judge the averaged weights
                fid, hb = self._judge()
                state = self.student.state()
                if live is not None:
                    average.restore(params, live)
                elapsed = time.monotonic() - start
                curve.append(EpochPoint(epoch, elapsed, fid.value, hb))
                if self.on_epoch is not None:
                    self.on_epoch(curve[-1], state)
                # The held-back loss (a continuous KL to the dense outputs) ranks the epochs and decides the keep:
                # a top-1 agreement on the 32-64 held-back rows moves in steps of 2-3 points, picked epochs that
                # were worse on unseen images, and rejected one whose loss had fallen 30%. The report shows both.
                if hb < best[0]:
                    best, since_best = (hb, epoch, state, fid, hb), 0
                else:
                    since_best += 1
                eta = elapsed / epoch * (s.epochs - epoch)
                progress_log.info("distill: epoch %d/%d, held-back %s, loss %.4f, %s elapsed, ETA %s", epoch,
                                  s.epochs, headline_text(fid), hb, format_seconds(elapsed),
                                  format_seconds(min(eta, max(0.0, deadline - time.monotonic()))))
                if stopped == "the time budget" or time.monotonic() >= deadline:
                    stopped = "the time budget"
                    break
                if since_best >= s.patience:
                    stopped = f"no lower held-back loss for {s.patience} epochs"
                    break
        finally:
            for h in handles:
                h.remove()
        self.student.load(best[2])
        return Outcome(best[2], best[1], baseline, best[3], base_loss, best[4], step, time.monotonic() - start,
                       time.process_time() - cpu0, stopped, curve)
