"""A confusion matrix over the classes plus background, at one IoU and one score threshold.

Rows are what is there (each class, then ``background``: nothing), columns what was detected
(each class, then ``missed``: nothing). Among the detections scoring >= the score threshold, in
descending score: a detection that COCO's matching (``matching``) makes a true positive counts
on the diagonal; one left over takes the best-overlapping still unclaimed object of another
class with IoU >= the threshold (row: that object's class); one on a crowd region of its class
is ignored; any other is a false positive on ``background``. An object that nothing claimed is
``missed``. So each object is counted once and each kept detection at most once.
"""

from typing import Collection, Dict, List, Mapping, Optional, Sequence

import numpy as np
from pycocotools.coco import COCO

from resnet_det.evaluation.matching import FP, TP, ImageMatch, match_images

BACKGROUND, MISSED = "background", "missed"


def confusion_matrix(
    coco_gt: COCO,
    detections: Sequence[Mapping],
    img_ids: Optional[Collection[int]] = None,
    score_thresh: float = 0.5,
    iou_thresh: float = 0.5,
    matches: Optional[List[ImageMatch]] = None,
) -> Dict:
    """``{"iou_thresh", "score_thresh", "classes", "rows", "columns", "counts"}``: ``counts[i][j]``
    objects of row i detected as column j, over the categories of ``coco_gt`` in id order."""
    matches = matches if matches is not None else match_images(coco_gt, detections, img_ids, iou_thresh)
    cat_ids = sorted(coco_gt.cats)
    index = {c: k for k, c in enumerate(cat_ids)}
    n = len(cat_ids)
    counts = np.zeros((n + 1, n + 1), dtype=np.int64)
    for m in matches:
        kept = np.flatnonzero(m.det_scores >= score_thresh)
        claimed = np.zeros(len(m.gt_classes), dtype=bool)
        claimed[m.det_gt[kept][m.status[kept] == TP]] = True  # the same as matching only the kept ones
        for d in kept:
            c = index[int(m.det_classes[d])]
            if m.status[d] == TP:
                counts[c, c] += 1
                continue
            if m.status[d] != FP:  # ignored: on a crowd region
                continue
            other = np.where(~claimed & (m.gt_classes != m.det_classes[d]), m.iou[d], -1.0)
            g = int(np.argmax(other)) if len(other) else -1
            if g >= 0 and other[g] >= iou_thresh:
                counts[index[int(m.gt_classes[g])], c] += 1
                claimed[g] = True
            else:
                counts[n, c] += 1
        for g in np.flatnonzero(~claimed):
            counts[index[int(m.gt_classes[g])], n] += 1
    names = [coco_gt.cats[c]["name"] for c in cat_ids]
    return {
        "iou_thresh": iou_thresh,
        "score_thresh": score_thresh,
        "classes": names,
        "rows": [*names, BACKGROUND],
        "columns": [*names, MISSED],
        "counts": counts.tolist(),
    }
