"""Which score to deploy at: precision, recall and F1 against the score threshold, per class and overall.

A detection counts as true at IoU 0.5 by COCO's greedy matching (``matching``), which visits
detections in descending score, so keeping only those at or above a score never changes whether
a kept one is true: one matching gives every threshold. For each class, and for all classes
pooled ("overall"), the report gives:

- ``at_score``: precision, recall and F1 of the detections scoring >= the chosen score;
- ``best_f1``: the score that maximises F1 (the highest such score on a tie), with its P, R, F1;
- ``at_precision``: the lowest score whose detections reach the target precision, i.e. the most
  recall at that precision; None when no score reaches it.

Precision is 0 with no detection kept; recall is 0 for a class without ground truth.
"""

from typing import Collection, Dict, List, Mapping, Optional, Sequence

import numpy as np
from pycocotools.coco import COCO

from resnet_det.evaluation.matching import FP, TP, ImageMatch, match_images

SCORE_GRID = np.linspace(0.0, 1.0, 101)


def _prf(tp: float, kept: float, num_gt: int) -> Dict[str, float]:
    precision = tp / kept if kept else 0.0
    recall = tp / num_gt if num_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def operating_points(scores: np.ndarray, is_tp: np.ndarray, num_gt: int, score_thresh: float, target_precision: float):
    """``at_score``, ``best_f1``, ``at_precision`` and the curves over ``SCORE_GRID`` for one set of
    scored detections (true positive or not, ignored ones left out)."""
    order = np.argsort(-scores, kind="stable")
    scores, is_tp = scores[order], is_tp[order]
    tp = np.cumsum(is_tp, dtype=np.float64)
    kept = np.arange(1, len(scores) + 1, dtype=np.float64)
    # Thresholds at each distinct score: every detection scoring >= it is kept.
    last = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True]) if len(scores) else np.zeros(0, dtype=int)
    precision = tp[last] / kept[last]
    recall = tp[last] / num_gt if num_gt else np.zeros(len(last))
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)

    n_at = int(np.searchsorted(-scores, -score_thresh, side="right"))  # scores >= score_thresh
    at_score = {"score": score_thresh, **_prf(tp[n_at - 1] if n_at else 0.0, n_at, num_gt)}
    at_score.update(tp=int(tp[n_at - 1]) if n_at else 0, fp=n_at - (int(tp[n_at - 1]) if n_at else 0))
    at_score["fn"] = num_gt - at_score["tp"]
    best_f1 = None
    if len(last) and f1.max() > 0:
        i = int(np.argmax(f1))
        best_f1 = {"score": float(scores[last[i]]), **_prf(tp[last[i]], kept[last[i]], num_gt)}
    reach = np.flatnonzero(precision >= target_precision - 1e-12)
    at_precision = None
    if len(reach) and tp[last[reach[-1]]] > 0:
        i = int(last[reach[-1]])
        at_precision = {"target": target_precision, "score": float(scores[i]), **_prf(tp[i], kept[i], num_gt)}

    n_grid = np.searchsorted(-scores, -SCORE_GRID, side="right")
    tp_grid = np.where(n_grid > 0, tp[np.maximum(n_grid - 1, 0)] if len(tp) else 0.0, 0.0)
    curves = [_prf(t, n, num_gt) for t, n in zip(tp_grid, n_grid)]
    return at_score, best_f1, at_precision, {k: [round(c[k], 4) for c in curves] for k in ("precision", "recall", "f1")}


def threshold_analysis(
    coco_gt: COCO,
    detections: Sequence[Mapping],
    img_ids: Optional[Collection[int]] = None,
    score_thresh: float = 0.5,
    target_precision: float = 0.9,
    iou_thresh: float = 0.5,
    matches: Optional[List[ImageMatch]] = None,
) -> Dict:
    """Operating points per class (rows for the classes with ground truth or detections) and
    overall, and the overall curves of precision, recall and F1 against the score (``SCORE_GRID``)."""
    matches = matches if matches is not None else match_images(coco_gt, detections, img_ids, iou_thresh)
    scores: Dict[int, List[float]] = {}
    truth: Dict[int, List[bool]] = {}
    num_gt: Dict[int, int] = {}
    for m in matches:
        for c in m.gt_classes:
            num_gt[int(c)] = num_gt.get(int(c), 0) + 1
        for c, s, status in zip(m.det_classes, m.det_scores, m.status):
            if status in (TP, FP):
                scores.setdefault(int(c), []).append(float(s))
                truth.setdefault(int(c), []).append(status == TP)

    def points(cats):
        s = np.array([v for c in cats for v in scores.get(c, [])], dtype=np.float64)
        t = np.array([v for c in cats for v in truth.get(c, [])], dtype=bool)
        return operating_points(s, t, sum(num_gt.get(c, 0) for c in cats), score_thresh, target_precision)

    per_class = []
    for c in sorted(set(num_gt) | set(scores)):
        at_score, best_f1, at_precision, _ = points([c])
        per_class.append(
            {"name": coco_gt.cats[c]["name"], "category_id": c, "num_gt": num_gt.get(c, 0),
             "at_score": at_score, "best_f1": best_f1, "at_precision": at_precision}
        )  # fmt: skip
    at_score, best_f1, at_precision, curves = points([row["category_id"] for row in per_class])
    return {
        "iou_thresh": iou_thresh,
        "score_thresh": score_thresh,
        "target_precision": target_precision,
        "overall": {
            "num_gt": sum(num_gt.values()),
            "at_score": at_score,
            "best_f1": best_f1,
            "at_precision": at_precision,
        },  # fmt: skip
        "per_class": per_class,
        "curves": {"score": [round(float(s), 4) for s in SCORE_GRID], **curves},
    }
