"""The distillation loss: the run's own damage measure (:mod:`onnxprune.fidelity.cost`), written in torch.

What the pruned model is trained to match is what its user reads, as the
oracle and the sensitivity curves weigh it: the KL divergence of classifier
logits (with a temperature) or probabilities (per position for sequences), for
a decoded detection head the class scores near detections plus the box change
relative to the box size where the dense model detects, for plain features
each feature's change relative to its spread on the dense outputs, for an
embedding one minus the cosine, and the squared error relative to the dense
output's energy otherwise. A summed squared error would train a YOLO head's
pixel boxes and leave its class probabilities to drift.
"""

from __future__ import annotations

from typing import Any, Optional

EPS = 1e-8


def _is_prob(t: Any) -> bool:
    """Rows of non-negative values summing to one along the last axis (a softmax output)."""
    import torch
    return bool(t.min() >= 0) and bool(torch.allclose(t.sum(-1), torch.ones_like(t.sum(-1)), atol=1e-3))


def _kl_last_axis(s: Any, t: Any, temperature: float, prob: bool) -> Any:
    """KL(teacher || student) over the last axis, averaged over the other axes but the batch (then the batch)."""
    import torch
    import torch.nn.functional as F
    if prob:
        lt, ls = torch.log(t.clamp_min(EPS)), torch.log(s.clamp_min(EPS))
        scale = 1.0
    else:
        lt, ls = F.log_softmax(t / temperature, -1), F.log_softmax(s / temperature, -1)
        scale = temperature * temperature
    kl = (lt.exp() * (lt - ls)).sum(-1)
    return kl.reshape(kl.shape[0], -1).mean(1).mean() * scale


def detection_loss(head: Any, s: Any, t: Any, conf: float) -> Any:
    """:func:`onnxprune.fidelity.cost.detection_cost` in torch (the teacher's scores set the weights)."""
    def split(y):
        if head.layout == "v8":
            return y[:, :4, :].transpose(1, 2), y[:, 4:4 + head.classes, :].transpose(1, 2)
        return y[:, :, :4], y[:, :, 5:5 + head.classes] * y[:, :, 4:5]
    bb, bs = split(t)
    pb, ps = split(s)
    relevance = (bs.maximum(ps.detach()) / conf).clamp(0.0, 1.0)
    n_conf = (bs >= conf).sum(dim=(1, 2)).clamp_min(1)
    score = (relevance * (ps - bs) ** 2).sum(dim=(1, 2)) / n_conf
    weight = (bs.amax(-1) / conf).clamp(0.0, 1.0)
    size = bb[..., 2:4].clamp_min(1.0)
    import torch
    rel = torch.cat([(pb[..., :2] - bb[..., :2]) / size, (pb[..., 2:4] - bb[..., 2:4]) / size], -1)
    box = (weight * (rel ** 2).sum(-1)).sum(1) / weight.sum(1).clamp_min(1.0)
    return (score + box).mean()


def feature_loss(scales: Optional[tuple[float, ...]], axis: int, s: Any, t: Any) -> Any:
    """Each feature's squared change relative to its dense spread, averaged (one spread when none is known)."""
    import torch
    if scales is None or axis >= t.ndim or len(scales) != t.shape[axis]:
        return relative_error(s, t)
    shape = [1] * t.ndim
    shape[axis] = len(scales)
    sc = torch.as_tensor(scales, dtype=s.dtype, device=s.device).reshape(shape).clamp_min(EPS)
    return (((s - t) / sc) ** 2).mean()


def relative_error(s: Any, t: Any) -> Any:
    """Squared error relative to the teacher's energy per row (the oracle's default for other outputs)."""
    num = ((s - t) ** 2).reshape(s.shape[0], -1).sum(1)
    den = (t ** 2).reshape(t.shape[0], -1).sum(1).clamp_min(EPS)
    return (num / den).mean()


def output_loss(spec: Any, s: Any, t: Any, temperature: float, conf: float) -> Any:
    """The loss of one output whose :class:`~onnxprune.fidelity.tasks.OutputSpec` is ``spec`` (None: unknown)."""
    import torch.nn.functional as F
    t = t.to(s.dtype)
    kind = getattr(spec, "kind", "features")
    if kind == "detect" and spec.head is not None:
        return detection_loss(spec.head, s, t, conf)
    if kind == "features":
        return feature_loss(getattr(spec, "scales", None), getattr(spec, "feature_axis", 1), s, t)
    if kind == "embed":
        return (1.0 - F.cosine_similarity(s.reshape(s.shape[0], -1), t.reshape(t.shape[0], -1), dim=1)).mean()
    if kind in ("logits", "prob", "sequence") and s.ndim >= 2:
        if kind == "logits" and s.ndim == 2:
            return _kl_last_axis(s, t, temperature, prob=False)
        return _kl_last_axis(s, t, temperature, prob=kind == "prob" or _is_prob(t))
    return relative_error(s, t)


def feature_map_loss(s: Any, t: Any) -> Any:
    """An intermediate feature map (a re-fitted layer's output): squared error relative to its variance."""
    return ((s - t) ** 2).mean() / (t.var() + EPS)
