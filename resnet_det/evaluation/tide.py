"""Error analysis in TIDE's terms (Bolya et al., "TIDE: A General Toolbox for Identifying Object
Detection Errors", ECCV 2020): what each kind of error costs in AP.

Every false positive at IoU ``pos`` (0.5) gets one of five types, tested in this order (the
paper's Sec. 2.2, as its reference code ``tidecv`` orders them); a missed object is the sixth:

- ``loc`` localisation: right class, ``bg <= IoU <= pos`` with a ground truth of that class;
- ``cls`` classification: IoU >= ``pos`` with a ground truth of another class;
- ``dupe`` duplicate: IoU >= ``pos`` with a ground truth of its class already taken by a
  higher-scoring detection;
- ``bkg`` background: IoU <= ``bg`` (0.1) with every ground truth;
- ``both`` classification and localisation: none of those (wrong class, ``bg < IoU < pos``);
- ``miss`` missed: a ground truth no detection found, and no ``cls``/``loc`` error points at.

dAP of a type is the AP50 gained by fixing only its errors, the oracle of the paper's Sec. 2.3:
a ``cls``/``loc`` error becomes the true positive of its ground truth (only the highest-scoring
one per ground truth; the others are dropped), ``dupe``/``bkg``/``both`` detections are
removed, a ``miss`` is taken off the ground truth. Fixing all false positives (they are scored
below every true positive) and all false negatives (taken off the ground truth) gives the
``FP`` and ``FN`` dAP. AP is TIDE's: 101-point interpolated AP50 per class with at most 100
detections per image, averaged over the classes that have ground truth.

Where this differs from ``tidecv`` 1.0.1, on purpose: a detection ignored by a crowd region (or
a VOC ``difficult`` object) is not an error (tidecv still classifies it), and a class with
detections but no ground truth is not averaged in as AP 0 (pycocotools leaves it out too).
Everything else agrees with tidecv to the last digit (tests/test_eval_tide.py).
"""

from collections import defaultdict
from typing import Callable, Collection, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from pycocotools.coco import COCO

from resnet_det.evaluation.matching import IGNORED, TP, match_images

ERROR_TYPES = ("cls", "loc", "both", "dupe", "bkg", "miss")
ERROR_NAMES = {
    "cls": "classification",
    "loc": "localisation",
    "both": "classification + localisation",
    "dupe": "duplicate",
    "bkg": "background",
    "miss": "missed",
}
RECALLS = np.arange(101) / 100  # as tidecv spells them: 0.6 is 60 / 100, not linspace(0, 1, 101)[60]

# A point of a class's PR data: (detection key, score, is a true positive).
Point = Tuple[int, float, bool]


def tide_ap(points: Sequence[Point], num_gt: int) -> float:
    """TIDE's AP of one class: interpolated precision at the 101 recall thresholds, averaged."""
    if num_gt <= 0 or not points:
        return 0.0
    ordered = sorted(points, key=lambda p: -p[1])
    tp = np.cumsum([p[2] for p in ordered], dtype=np.float64)
    n = np.arange(1, len(ordered) + 1, dtype=np.float64)
    precision = np.maximum.accumulate((tp / n)[::-1])[::-1]
    recall = tp / num_gt
    index = np.searchsorted(recall, RECALLS, side="left")
    sampled = np.where(index < len(precision), precision[np.minimum(index, len(precision) - 1)], 0.0)
    return float(sampled.mean())


class _Error:
    """One error: its type, the class and point it is now (None: ignored), the class and point
    fixing it gives (None: removed), and for a ``miss`` the class whose ground truth shrinks."""

    def __init__(self, kind, image_id, det=None, gt=None, original=None, target=None):
        self.kind, self.image_id, self.det, self.gt = kind, image_id, det, gt
        self.original, self.target = original, target  # (class, Point) / (class, gt key) or None


def _map(points: Mapping[int, List[Point]], num_gt: Mapping[int, int], classes: Collection[int]) -> float:
    aps = [tide_ap(points.get(c, []), num_gt.get(c, 0)) for c in classes if points.get(c) or num_gt.get(c, 0)]
    return float(np.mean(aps)) if aps else 0.0


def tide_errors(
    coco_gt: COCO,
    detections: Sequence[Mapping],
    img_ids: Optional[Collection[int]] = None,
    pos_thresh: float = 0.5,
    bg_thresh: float = 0.1,
    max_dets: int = 100,
) -> Dict:
    """TIDE's analysis of ``detections`` (COCO results format) on ``coco_gt``.

    Returns ``AP50`` (TIDE's), ``dAP`` per error type (``cls`` ... ``miss``), ``counts`` per type,
    ``special_dAP`` (``FP``, ``FN``), ``num_fp`` and ``num_fn``, ``per_class`` counts per type
    keyed by category id, and ``errors`` (type, image id, detection index or None, ground-truth
    box or None) for drawing. Numbers are fractions in 0..1.
    """
    matches = match_images(coco_gt, detections, img_ids, iou_thresh=pos_thresh, max_dets=max_dets)
    num_gt: Dict[int, int] = defaultdict(int)
    correct: Dict[int, List[Point]] = defaultdict(list)
    errors: List[_Error] = []
    false_negatives: Dict[int, int] = defaultdict(int)
    best: Dict[Tuple[int, int], Tuple[float, int]] = {}  # ground truth -> (score, detection) fixing it
    for m in matches:
        for c in m.gt_classes:
            num_gt[int(c)] += 1
        usable = np.zeros(len(m.gt_classes), dtype=bool)
        same = m.det_classes[:, None] == m.gt_classes[None, :]
        for d in range(len(m.det_index)):
            key, score, cls = int(m.det_index[d]), float(m.det_scores[d]), int(m.det_classes[d])
            if m.status[d] == TP:
                correct[cls].append((key, score, True))
                continue
            if m.status[d] == IGNORED:
                continue
            original = (cls, (key, score, False))
            kind, gt_index = _classify(m, d, same[d], pos_thresh, bg_thresh)
            error = _Error(kind, m.image_id, det=key, original=original)
            if kind in ("cls", "loc") and not m.gt_matched[gt_index]:
                usable[gt_index] = True
                gt_key = (m.image_id, gt_index)
                if gt_key not in best or best[gt_key][0] < score:
                    best[gt_key] = (score, key)
                error.target = (int(m.gt_classes[gt_index]) if kind == "cls" else cls, gt_key)
            if kind != "bkg" and gt_index >= 0:
                error.gt = [float(v) for v in m.gt_boxes[gt_index]]
            errors.append(error)
        for g in np.flatnonzero(~m.gt_matched):
            false_negatives[int(m.gt_classes[g])] += 1
            if not usable[g]:
                errors.append(
                    _Error(
                        "miss", m.image_id, gt=[float(v) for v in m.gt_boxes[g]], target=(int(m.gt_classes[g]), None)
                    )
                )

    classes = sorted(num_gt)
    base_points = _points(correct, errors, lambda e: False, best)
    base = _map(base_points, num_gt, classes)

    def fixed_map(kind: str) -> float:
        gt_left = dict(num_gt)
        for e in errors:
            if e.kind == kind == "miss":
                gt_left[e.target[0]] -= 1
        return _map(_points(correct, errors, lambda e: e.kind == kind, best), gt_left, classes)

    dap = {kind: max(fixed_map(kind) - base, 0.0) for kind in ERROR_TYPES}
    precise = {c: [(k, 1.0 if t else 0.0, t) for k, _, t in pts] for c, pts in base_points.items()}
    complete = {c: n - false_negatives[c] for c, n in num_gt.items()}
    per_class: Dict[int, Dict[str, int]] = defaultdict(lambda: dict.fromkeys(ERROR_TYPES, 0))
    for e in errors:
        per_class[e.target[0] if e.kind == "miss" else e.original[0]][e.kind] += 1
    return {
        "pos_thresh": pos_thresh,
        "bg_thresh": bg_thresh,
        "AP50": base,
        "dAP": dap,
        "counts": {kind: sum(e.kind == kind for e in errors) for kind in ERROR_TYPES},
        "special_dAP": {
            "FP": _map(precise, num_gt, classes) - base,
            "FN": _map(base_points, complete, classes) - base,
        },
        "num_fp": sum(e.kind != "miss" for e in errors),
        "num_fn": sum(false_negatives.values()),
        "per_class": {int(c): dict(v) for c, v in per_class.items()},
        "errors": [{"type": e.kind, "image_id": e.image_id, "detection": e.det, "gt_bbox": e.gt} for e in errors],
    }


def _classify(m, d: int, same_class: np.ndarray, pos: float, bg: float) -> Tuple[str, int]:
    """The type of false positive ``d`` of image ``m`` and the ground truth it concerns (-1: none)."""
    if not len(m.gt_classes):
        return "bkg", -1
    iou = m.iou[d]
    cls_iou = np.where(same_class, iou, 0.0)
    g = int(np.argmax(cls_iou))
    if bg <= cls_iou[g] <= pos:
        return "loc", g
    other = np.where(same_class, 0.0, iou)
    g = int(np.argmax(other))
    if other[g] >= pos:
        return "cls", g
    taken = np.where(m.gt_matched, cls_iou, 0.0)
    g = int(np.argmax(taken))
    if taken[g] >= pos:
        return "dupe", g
    g = int(np.argmax(iou))
    if iou[g] <= bg:
        return "bkg", -1
    return "both", g


def _points(
    correct: Mapping[int, List[Point]],
    errors: Sequence[_Error],
    fix: Callable[[_Error], bool],
    best: Mapping[Tuple[int, int], Tuple[float, int]],
) -> Dict[int, List[Point]]:
    """Each class's PR data with the errors ``fix`` selects fixed."""
    points: Dict[int, List[Point]] = defaultdict(list)
    for c, pts in correct.items():
        points[c].extend(pts)
    for e in errors:
        if not fix(e):
            if e.original is not None:
                points[e.original[0]].append(e.original[1])
        elif e.kind in ("cls", "loc") and e.target is not None and best[e.target[1]][1] == e.det:
            key, score, _ = e.original[1]
            points[e.target[0]].append((key, score, True))
    return points
