"""The parts of a report that explain its AP, from the same detections and ground truth.

``explain`` adds to a report, for COCO-format and VOC data alike:

- ``voc``: both PASCAL VOC metrics (VOC2007 11-point and VOC2010+ area AP at IoU 0.5, the
  devkit's rules), whatever the report's own metric;
- ``tide``: TIDE's error analysis (``tide``);
- ``thresholds``: precision, recall and F1 at the chosen score, the best-F1 score and the score
  for a target precision (``thresholds``);
- ``confusion``: the confusion matrix at IoU 0.5 and the chosen score (``confusion``);
- ``images``: per image, its false positives and missed objects at the chosen score, the
  gallery's choice of what to draw.
"""

from typing import Collection, Dict, List, Mapping, Optional, Sequence

import numpy as np
from pycocotools.coco import COCO

from resnet_det.evaluation.confusion import confusion_matrix
from resnet_det.evaluation.matching import FP, IGNORED, TP, ImageMatch, match_images
from resnet_det.evaluation.thresholds import threshold_analysis
from resnet_det.evaluation.tide import tide_errors
from resnet_det.evaluation.voc import evaluate_voc

IOU = 0.5
GALLERY_SIZE = 12  # images drawn in report.html, those with the most errors


def records_from_coco(coco_gt: COCO) -> List[Dict]:
    """Records (``annotations`` with ``[x0, y0, x1, y1]`` boxes, contiguous ``label`` in category-id
    order, crowd regions as ``iscrowd``) of a COCO ground truth, for the VOC metrics."""
    label_of = {c: k for k, c in enumerate(sorted(coco_gt.cats), 1)}
    records = []
    for image_id in sorted(coco_gt.getImgIds()):
        anns = coco_gt.imgToAnns.get(image_id, [])
        records.append(
            {
                "image_id": image_id,
                "file_name": coco_gt.imgs[image_id].get("file_name"),
                "annotations": [
                    {
                        "bbox": [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]],
                        "label": label_of[a["category_id"]],
                        "iscrowd": int(a.get("iscrowd", 0)),
                    }
                    for a in anns
                ],
            }
        )
    return records


def voc_metrics(
    records: Sequence[Mapping], detections: Sequence[Mapping], coco_gt: COCO, label_to_category_id: Mapping[int, int]
) -> Dict:
    """``{"voc07": {"mAP", "AP": {class: AP}}, "voc10": ...}``; ``records`` label objects 1..K,
    ``label_to_category_id`` names their categories in ``coco_gt``."""
    labels = sorted(label_to_category_id)
    names = [coco_gt.cats[label_to_category_id[k]]["name"] for k in labels]
    out = {}
    for name, use_07 in (("voc07", True), ("voc10", False)):
        voc = evaluate_voc(records, detections, names, label_to_category_id, use_07_metric=use_07)
        out[name] = {"mAP": voc["summary"]["mAP"], "AP": {row["name"]: row["AP"] for row in voc["per_class"]}}
    return out


def image_errors(matches: Sequence[ImageMatch], score_thresh: float, file_names: Mapping[int, str]) -> List[Dict]:
    """Per image with any: false positives and missed objects among the detections >= ``score_thresh``,
    most errors first; the first ``GALLERY_SIZE`` also carry their boxes (``bbox``, ``category_id``,
    ``score``, ``outcome``: tp, fp or missed) and ``file_name``, for the report's gallery."""
    rows = []
    for m in matches:
        kept = (m.det_scores >= score_thresh) & (m.status != IGNORED)
        found = np.zeros(len(m.gt_classes), dtype=bool)
        found[m.det_gt[kept & (m.status == TP)]] = True
        fp, fn = int((kept & (m.status == FP)).sum()), int((~found).sum())
        if fp or fn:
            rows.append(
                {"image_id": int(m.image_id), "fp": fp, "fn": fn, "tp": int(found.sum()), "_match": (m, kept, found)}
            )
    rows.sort(key=lambda r: (-(r["fp"] + r["fn"]), r["image_id"]))
    for k, row in enumerate(rows):
        m, kept, found = row.pop("_match")
        if k >= GALLERY_SIZE:
            continue
        boxes = [
            {"bbox": [float(v) for v in m.det_boxes[d]], "category_id": int(m.det_classes[d]),
             "score": float(m.det_scores[d]), "outcome": "tp" if m.status[d] == TP else "fp"}
            for d in np.flatnonzero(kept)
        ]  # fmt: skip
        boxes += [
            {"bbox": [float(v) for v in m.gt_boxes[g]], "category_id": int(m.gt_classes[g]), "score": None, "outcome": "missed"}
            for g in np.flatnonzero(~found)
        ]  # fmt: skip
        row.update(file_name=file_names.get(m.image_id), boxes=boxes)
    return rows


def explain(
    coco_gt: COCO,
    detections: Sequence[Mapping],
    records: Optional[Sequence[Mapping]] = None,
    label_to_category_id: Optional[Mapping[int, int]] = None,
    img_ids: Optional[Collection[int]] = None,
    score_thresh: float = 0.5,
    target_precision: float = 0.9,
) -> Dict:
    """The report's explaining parts (see the module's docstring). ``records`` and their
    ``label_to_category_id`` default to the ground truth's own (``records_from_coco``)."""
    img_ids = sorted(coco_gt.getImgIds() if img_ids is None else img_ids)
    if records is None:
        records = records_from_coco(coco_gt)
        label_to_category_id = dict(enumerate(sorted(coco_gt.cats), 1))
    wanted = set(img_ids)
    matches = match_images(coco_gt, detections, img_ids, IOU)
    return {
        "voc": voc_metrics([r for r in records if r["image_id"] in wanted], detections, coco_gt, label_to_category_id),
        "tide": tide_errors(coco_gt, detections, img_ids, pos_thresh=IOU),
        "thresholds": threshold_analysis(
            coco_gt, detections, img_ids, score_thresh, target_precision, IOU, matches=matches
        ),
        "confusion": confusion_matrix(coco_gt, detections, img_ids, score_thresh, IOU, matches=matches),
        "images": image_errors(matches, score_thresh, {r["image_id"]: r.get("file_name") for r in records}),
    }
