"""Detections and ground truth of one image side by side, and COCO's greedy matching at one IoU.

The error analysis (``tide``), the deployment thresholds (``thresholds``), the confusion matrix
(``confusion``) and the gallery all need to know, detection by detection, whether it is a true
positive; this module answers it once, the way ``COCOeval.evaluateImg`` does: detections in
descending score take the best-overlapping unmatched ground truth of their class with
IoU >= the threshold; one left without a match that covers a crowd region (VOC's ``difficult``
objects are crowd regions here too, see ``coco.coco_gt_from_records``) of its class by
intersection / its own area >= the threshold is ignored, neither true nor false. Boxes are
``[x, y, w, h]`` in continuous pixels, as in COCO files.
"""

from dataclasses import dataclass
from typing import Collection, Dict, List, Mapping, Optional, Sequence

import numpy as np
from pycocotools.coco import COCO

TP, FP, IGNORED = 1, 0, -1


@dataclass
class ImageMatch:
    """One image: its ground truth (crowd regions apart), its detections in descending score,
    and their match at ``iou_thresh``.

    ``det_index`` maps back to the caller's detection list; ``status`` is TP, FP or IGNORED per
    detection; ``det_gt`` the index of the ground truth a true positive took (else -1);
    ``gt_matched`` whether each ground truth was found; ``iou`` is detections x ground truth,
    every class.
    """

    image_id: int
    gt_boxes: np.ndarray
    gt_classes: np.ndarray
    crowd_boxes: np.ndarray
    crowd_classes: np.ndarray
    det_boxes: np.ndarray
    det_classes: np.ndarray
    det_scores: np.ndarray
    det_index: np.ndarray
    iou: np.ndarray
    status: np.ndarray
    det_gt: np.ndarray
    gt_matched: np.ndarray


def box_iou(a: np.ndarray, b: np.ndarray, crowd: bool = False) -> np.ndarray:
    """IoU of each ``[x, y, w, h]`` of ``a`` with each of ``b`` (``len(a) x len(b)``); with
    ``crowd``, intersection over the area of ``a``, as pycocotools measures a crowd region."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2]) - np.maximum(
        a[:, None, 0], b[None, :, 0]
    )
    ih = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3]) - np.maximum(
        a[:, None, 1], b[None, :, 1]
    )
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] * a[:, 3])[:, None]
    union = area_a if crowd else area_a + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _greedy(iou: np.ndarray, det_classes, gt_classes, crowd_iou, det_crowd_ok, iou_thresh: float):
    status = np.full(len(det_classes), FP, dtype=np.int64)
    det_gt = np.full(len(det_classes), -1, dtype=np.int64)
    free = np.ones(len(gt_classes), dtype=bool)
    for d in range(len(det_classes)):
        candidates = (gt_classes == det_classes[d]) & free
        if candidates.any():
            ious = np.where(candidates, iou[d], -1.0)
            g = int(np.argmax(ious))
            if ious[g] >= iou_thresh:
                status[d], det_gt[d], free[g] = TP, g, False
                continue
        if det_crowd_ok is not None and (crowd_iou[d][det_crowd_ok[d]] >= iou_thresh).any():
            status[d] = IGNORED
    return status, det_gt, ~free


def match_images(
    coco_gt: COCO,
    detections: Sequence[Mapping],
    img_ids: Optional[Collection[int]] = None,
    iou_thresh: float = 0.5,
    max_dets: Optional[int] = None,
) -> List[ImageMatch]:
    """Every image of ``img_ids`` (default: all of the ground truth's), matched at ``iou_thresh``;
    with ``max_dets``, only each image's highest-scoring detections take part (TIDE keeps 100)."""
    img_ids = sorted(coco_gt.getImgIds() if img_ids is None else img_ids)
    by_image: Dict[int, List[int]] = {i: [] for i in img_ids}
    for k, det in enumerate(detections):
        if det["image_id"] in by_image:
            by_image[det["image_id"]].append(k)
    out = []
    for image_id in img_ids:
        anns = coco_gt.imgToAnns.get(image_id, [])
        gt = [a for a in anns if not a.get("iscrowd", 0)]
        crowd = [a for a in anns if a.get("iscrowd", 0)]
        index = np.array(by_image[image_id], dtype=np.int64)
        scores = np.array([detections[k]["score"] for k in index], dtype=np.float64)
        order = np.argsort(-scores, kind="stable")[:max_dets]
        index, scores = index[order], scores[order]
        det_boxes = np.array([detections[k]["bbox"] for k in index], dtype=np.float64).reshape(-1, 4)
        det_classes = np.array([detections[k]["category_id"] for k in index], dtype=np.int64)
        gt_boxes = np.array([a["bbox"] for a in gt], dtype=np.float64).reshape(-1, 4)
        gt_classes = np.array([a["category_id"] for a in gt], dtype=np.int64)
        crowd_boxes = np.array([a["bbox"] for a in crowd], dtype=np.float64).reshape(-1, 4)
        crowd_classes = np.array([a["category_id"] for a in crowd], dtype=np.int64)
        iou = box_iou(det_boxes, gt_boxes)
        crowd_iou = box_iou(det_boxes, crowd_boxes, crowd=True) if len(crowd) else None
        same_crowd = det_classes[:, None] == crowd_classes[None, :] if len(crowd) else None
        status, det_gt, gt_matched = _greedy(iou, det_classes, gt_classes, crowd_iou, same_crowd, iou_thresh)
        out.append(
            ImageMatch(
                image_id, gt_boxes, gt_classes, crowd_boxes, crowd_classes, det_boxes, det_classes, scores,
                index, iou, status, det_gt, gt_matched,
            )
        )  # fmt: skip
    return out
