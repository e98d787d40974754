"""PASCAL VOC detection AP, as the official devkit computes it.

Two definitions, picked by year: VOC2007's 11-point interpolated AP (mean of the best precision
at recall >= 0, 0.1, ..., 1) and VOC2010+'s area under the monotone precision envelope. Both
follow the devkit (``VOCevaldet.m``, and ``voc_eval.py``, its Python port that py-faster-rcnn and
detectron2 use) step by step:

- a detection is a true positive when its best-overlapping ground truth of the class in its image
  has IoU > 0.5 and is not yet taken; each ground truth is matched at most once, detections are
  visited in descending score, so a duplicate is a false positive;
- ``difficult`` ground truth is ignored: not counted as a miss, and a detection matched to it
  is neither a true nor a false positive (crowd regions are treated the same way);
- boxes are measured in the devkit's inclusive 1-based pixels (width = xmax - xmin + 1).

Numbers are fractions in 0..1. A class without (non-difficult) ground truth has no AP (None) and
is left out of the mean, as pycocotools leaves out categories without ground truth.
"""

from collections import defaultdict
from typing import Dict, Iterable, List, Mapping, Sequence

import numpy as np

# The devkit's 11 recall levels. np.arange (not linspace) as in voc_eval.py, so that recalls
# lying on a level (e.g. 0.3) compare exactly as they do there.
RECALL_LEVELS_11 = np.arange(0.0, 1.1, 0.1)
# Where the PR curves for plots are sampled: pycocotools' 101 recall thresholds.
PLOT_RECALLS = np.linspace(0.0, 1.0, 101)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP from the cumulative recall and precision of the detections in descending score."""
    recall, precision = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        return float(np.mean([precision[recall >= t].max(initial=0.0) for t in RECALL_LEVELS_11]))
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the envelope: best precision at any higher recall
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _devkit_boxes(xyxy: np.ndarray) -> np.ndarray:
    """0-based continuous [x0, y0, x1, y1] -> the devkit's 1-based inclusive [xmin, ymin, xmax, ymax].

    Records store x0 = xmin - 1 and x1 = xmax; detections are in the same frame.
    """
    return xyxy + np.array([1.0, 1.0, 0.0, 0.0])


def _devkit_iou(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of one devkit box with each of ``gts``, widths and heights counted inclusively (+1)."""
    iw = np.maximum(np.minimum(gts[:, 2], box[2]) - np.maximum(gts[:, 0], box[0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gts[:, 3], box[3]) - np.maximum(gts[:, 1], box[1]) + 1.0, 0.0)
    inter = iw * ih
    area_box = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
    area_gts = (gts[:, 2] - gts[:, 0] + 1.0) * (gts[:, 3] - gts[:, 1] + 1.0)
    return inter / (area_box + area_gts - inter)


def _match(gt: Mapping[int, Dict[str, np.ndarray]], dets: List[Mapping], iou_thresh: float):
    """True/false positive flags of ``dets`` (one class) in descending score, as the devkit sets them."""
    scores = np.array([d["score"] for d in dets], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
    taken = {image_id: np.zeros(len(g["boxes"]), dtype=bool) for image_id, g in gt.items()}
    for rank, i in enumerate(order):
        image_id = dets[i]["image_id"]
        if image_id not in gt:  # no object of the class in that image
            fp[rank] = 1
            continue
        x, y, w, h = dets[i]["bbox"]
        ious = _devkit_iou(_devkit_boxes(np.array([x, y, x + w, y + h], dtype=np.float64)), gt[image_id]["boxes"])
        j = int(np.argmax(ious))
        if ious[j] <= iou_thresh:
            fp[rank] = 1
        elif gt[image_id]["ignored"][j]:
            continue
        elif taken[image_id][j]:
            fp[rank] = 1
        else:
            tp[rank] = 1
            taken[image_id][j] = True
    return tp, fp


def evaluate_voc(
    records: Iterable[Mapping],
    detections: Sequence[Mapping],
    class_names: Sequence[str],
    label_to_category_id: Mapping[int, int],
    use_07_metric: bool,
    iou_thresh: float = 0.5,
) -> Dict:
    """The VOC AP of each class and their mean, from dataset records and COCO-format detections.

    Returns the report's parts: ``summary`` (``mAP``), ``per_class`` rows (``name``,
    ``category_id``, ``AP``, ``num_gt`` non-difficult boxes) and ``pr_curves`` (interpolated
    precision at 101 recall thresholds, per class with ground truth).
    """
    category_to_label = {cat: label for label, cat in label_to_category_id.items()}
    gt_lists = defaultdict(lambda: defaultdict(lambda: {"boxes": [], "ignored": []}))
    for rec in records:
        for obj in rec["annotations"]:
            entry = gt_lists[obj["label"]][rec["image_id"]]
            entry["boxes"].append(obj["bbox"])
            entry["ignored"].append(bool(obj.get("difficult", 0) or obj.get("iscrowd", 0)))
    dets_by_label = defaultdict(list)
    for det in detections:
        dets_by_label[category_to_label[det["category_id"]]].append(det)

    per_class, curves, aps = [], {}, []
    for label, name in enumerate(class_names, 1):
        gt = {
            image_id: {
                "boxes": _devkit_boxes(np.asarray(g["boxes"], dtype=np.float64).reshape(-1, 4)),
                "ignored": np.asarray(g["ignored"], dtype=bool),
            }
            for image_id, g in gt_lists[label].items()
        }
        num_gt = int(sum((~g["ignored"]).sum() for g in gt.values()))
        row = {"name": name, "category_id": label_to_category_id[label], "AP": None, "num_gt": num_gt}
        per_class.append(row)
        if num_gt == 0:
            continue
        tp, fp = _match(gt, dets_by_label[label], iou_thresh)
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / num_gt
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        row["AP"] = voc_ap(recall, precision, use_07_metric)
        aps.append(row["AP"])
        curves[name] = [round(float(precision[recall >= r].max(initial=0.0)), 4) for r in PLOT_RECALLS]
    return {
        "summary": {"mAP": float(np.mean(aps)) if aps else None},
        "per_class": per_class,
        "pr_curves": {"recall": [round(float(r), 4) for r in PLOT_RECALLS], "precision": curves},
    }
