"""Detections as a user reads them from a decoded detector output, and how two sets of them agree.

A decoded head holds, per anchor, a box (centre x, centre y, width, height,
in pixels) and per-class scores: Ultralytics YOLOv8/v11 write it as
``(N, 4 + C, A)`` ("v8"), YOLOv5 and YOLOX as ``(N, A, 5 + C)`` with an
objectness column that multiplies the class scores ("v5"). A user keeps the
anchors whose best class score reaches a confidence threshold and runs
class-wise non-maximum suppression; the pruned model is judged by how its
detections match the dense model's (same class, IoU >= 0.5): precision,
recall, F1, and COCO's mAP50-95 with the dense detections as ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NMS_IOU = 0.45
MATCH_IOU = 0.5
MAX_DETECTIONS = 300
MAP_IOUS = np.linspace(0.5, 0.95, 10)


@dataclass(frozen=True)
class Head:
    """Where a decoded detection head keeps its parts."""

    layout: str  # "v8": (N, 4 + C, A); "v5": (N, A, 5 + C) with objectness at column 4
    classes: int

    def split(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(boxes [N, A, 4] as cx, cy, w, h; class scores [N, A, C]) of one output batch."""
        y = np.asarray(y, dtype=np.float64)
        if self.layout == "v8":
            return y[:, :4, :].transpose(0, 2, 1), y[:, 4:4 + self.classes, :].transpose(0, 2, 1)
        return y[:, :, :4], y[:, :, 5:5 + self.classes] * y[:, :, 4:5]


def _xyxy(boxes: np.ndarray) -> np.ndarray:
    cx, cy, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` [n, 4] with every box of ``b`` [m, 4], both x1, y1, x2, y2."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    while order and len(keep) < MAX_DETECTIONS:
        i = order.pop(0)
        keep.append(i)
        if order:
            rest = np.array(order)
            overlap = iou_matrix(boxes[i:i + 1], boxes[rest])[0]
            order = [int(j) for j, o in zip(rest, overlap) if o <= iou]
    return keep


@dataclass(frozen=True)
class Detections:
    """One image's detections: boxes [n, 4] (x1, y1, x2, y2), scores [n], classes [n]."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def detect(boxes: np.ndarray, scores: np.ndarray, conf: float, nms_iou: float = NMS_IOU) -> Detections:
    """One image's detections: best class per anchor at ``conf`` or above, class-wise NMS."""
    cls = scores.argmax(1)
    best = scores[np.arange(len(cls)), cls]
    keep = np.nonzero(best >= conf)[0]
    xyxy, best, cls = _xyxy(boxes[keep]), best[keep], cls[keep]
    chosen: list[int] = []
    for c in np.unique(cls):
        idx = np.nonzero(cls == c)[0]
        chosen += [int(idx[k]) for k in _nms(xyxy[idx], best[idx], nms_iou)]
    chosen = sorted(chosen, key=lambda k: -best[k])[:MAX_DETECTIONS]
    return Detections(xyxy[chosen], best[chosen], cls[chosen])


def match(pred: Detections, ref: Detections, iou: float = MATCH_IOU) -> np.ndarray:
    """Per predicted detection (in score order): whether it matches a not yet matched reference one of its class."""
    hit = np.zeros(len(pred.scores), dtype=bool)
    if len(pred.scores) == 0 or len(ref.scores) == 0:
        return hit
    overlap = iou_matrix(pred.boxes, ref.boxes)
    overlap[pred.classes[:, None] != ref.classes[None, :]] = 0.0
    taken = np.zeros(len(ref.scores), dtype=bool)
    for i in np.argsort(-pred.scores, kind="stable"):
        o = np.where(taken, 0.0, overlap[i])
        j = int(o.argmax())
        if o[j] >= iou:
            hit[i] = taken[j] = True
    return hit


def agreement(ref_out: list[np.ndarray], out: list[np.ndarray], head: Head, conf: float) -> dict[str, float]:
    """Precision, recall and F1 of ``out``'s detections against ``ref_out``'s, and mAP50-95 on them as truth.

    ``ref_out`` and ``out`` are lists of output batches of the head. Images
    where neither model detects anything count as agreeing (F1 is 1 when no
    image has a detection in either).
    """
    tp = n_pred = n_ref = 0
    per_class: dict[int, list] = {}
    for rb, pb in zip(ref_out, out):
        rboxes, rscores = head.split(rb)
        pboxes, pscores = head.split(pb)
        for i in range(rboxes.shape[0]):
            ref = detect(rboxes[i], rscores[i], conf)
            pred = detect(pboxes[i], pscores[i], conf)
            tp += int(match(pred, ref).sum())
            n_pred += len(pred.scores)
            n_ref += len(ref.scores)
            _collect_ap(per_class, detect(pboxes[i], pscores[i], min(conf, 0.001)), ref)
    precision = tp / n_pred if n_pred else (1.0 if n_ref == 0 else 0.0)
    recall = tp / n_ref if n_ref else (1.0 if n_pred == 0 else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"detection_f1": f1, "precision": precision, "recall": recall, "map50_95": _map(per_class),
            "reference_detections": float(n_ref)}


def _collect_ap(per_class: dict[int, list], pred: Detections, ref: Detections) -> None:
    """Per class: the scores of predictions, whether each matches at every IoU of MAP_IOUS, and the truth count."""
    for c in set(int(x) for x in ref.classes) | set(int(x) for x in pred.classes):
        p = Detections(pred.boxes[pred.classes == c], pred.scores[pred.classes == c], pred.classes[pred.classes == c])
        r = Detections(ref.boxes[ref.classes == c], ref.scores[ref.classes == c], ref.classes[ref.classes == c])
        hits = np.stack([match(p, r, t) for t in MAP_IOUS], axis=1) if len(p.scores) else np.zeros((0, len(MAP_IOUS)))
        entry = per_class.setdefault(c, [[], [], 0])
        entry[0].append(p.scores)
        entry[1].append(hits)
        entry[2] += len(r.scores)


def _map(per_class: dict[int, list]) -> float:
    """COCO-style mean average precision over classes with reference detections (101-point interpolation)."""
    aps = []
    for scores, hits, n_ref in per_class.values():
        if n_ref == 0:
            continue
        s = np.concatenate(scores)
        h = np.concatenate(hits) if s.size else np.zeros((0, len(MAP_IOUS)))
        order = np.argsort(-s, kind="stable")
        h = h[order]
        for t in range(len(MAP_IOUS)):
            tps = np.cumsum(h[:, t])
            fps = np.cumsum(~h[:, t].astype(bool))
            recall = tps / n_ref
            precision = tps / np.maximum(tps + fps, 1)
            envelope = np.maximum.accumulate(precision[::-1])[::-1] if precision.size else precision
            grid = np.linspace(0, 1, 101)
            idx = np.searchsorted(recall, grid, side="left")
            aps.append(float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in idx])))
    return float(np.mean(aps)) if aps else 1.0
