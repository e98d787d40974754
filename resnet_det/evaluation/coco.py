"""COCO-style box evaluation through pycocotools: the 12 standard numbers, per-category AP, PR data.

pycocotools is the reference, so ``COCOeval`` runs unchanged and its printed summary is kept
verbatim: what we report agrees with it to the last digit. This module adds what pycocotools
leaves to its caller: one-line errors for the inputs it would crash on or silently misread
(malformed JSON, missing fields, ids of another dataset, an empty results list), the per-category
table, and precision-recall data for plots. Numbers are fractions in 0..1, as pycocotools prints
them; -1 is its "no ground truth in this range".

``backend="faster-coco-eval"`` runs the same evaluation through the faster-coco-eval package's
C++ ``COCOeval_faster`` instead (tests/test_eval_backends.py holds it equal to pycocotools to
1e-6 on real data); pycocotools stays the default and the reference.
"""

import contextlib
import io
import logging
import math
import numbers
from collections import Counter
from pathlib import Path
from typing import Any, Collection, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resnet_det.errors import EvaluationError
from resnet_det.utils import file_io

logger = logging.getLogger(__name__)

# The order of COCOeval.stats, under the names detectron2 uses.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
DETECTION_FIELDS = ("image_id", "category_id", "bbox", "score")
BACKENDS = ("pycocotools", "faster-coco-eval")


def read_json(path: Path, what: str) -> Any:
    """The parsed JSON of ``path``; a missing or malformed file is an ``EvaluationError``."""
    return file_io.read_json(path, what, EvaluationError, fix=f"fix or regenerate the {what}")


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_xywh(b: Any) -> bool:
    return isinstance(b, (list, tuple)) and len(b) == 4 and all(map(_is_number, b)) and b[2] >= 0 and b[3] >= 0


def _is_id_in(v: Any, ids: Collection[int]) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v in ids


def _require_fields(items: Sequence, fields: Sequence[str], path: Any, kind: str) -> None:
    """Each item is an object holding ``fields``; a ``bbox`` among them must be [x, y, w, h]."""
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise EvaluationError(
                f"{path}: {kind} #{i} is {type(item).__name__}, not an object with {', '.join(fields)}"
            )
        missing = [f for f in fields if f not in item]
        if missing:
            raise EvaluationError(f"{path}: {kind} #{i} lacks '{missing[0]}'; each {kind} needs {', '.join(fields)}")
        if "bbox" in fields and not _is_xywh(item["bbox"]):
            raise EvaluationError(
                f"{path}: {kind} #{i} has bbox {item['bbox']!r}; it must be [x, y, width, height], finite, size >= 0"
            )


def _quiet_coco(dataset: dict) -> COCO:
    """A pycocotools ``COCO`` indexed from an in-memory dict, without its progress prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_coco_gt(path: Path) -> COCO:
    """A COCO instances file as a pycocotools ``COCO``, checked for what ``COCOeval`` reads.

    ``area`` and ``iscrowd`` default to the box area and 0 when absent, as in files written by
    tools other than COCO's own.
    """
    data = read_json(path, "ground-truth file")
    sections = ("images", "annotations", "categories")
    if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in sections):
        raise EvaluationError(
            f"{path}: not a COCO instances file; it needs 'images', 'annotations' and 'categories' lists"
        )
    if not data["annotations"]:
        raise EvaluationError(
            f"{path} has no annotations: there is nothing to evaluate against; give a file with boxes"
        )
    _require_fields(data["images"], ("id",), path, "image")
    _require_fields(data["categories"], ("id", "name"), path, "category")
    _require_fields(data["annotations"], ("id", "image_id", "category_id", "bbox"), path, "annotation")
    for ann in data["annotations"]:
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
    return _quiet_coco(data)


def coco_gt_from_records(
    records: Iterable[Mapping], class_names: Sequence[str], label_to_category_id: Mapping[int, int]
) -> COCO:
    """Dataset records as an in-memory COCO ground truth, so that pycocotools can score any dataset.

    ``difficult`` objects become crowd regions (iscrowd=1): ``COCOeval`` then neither counts them
    as misses nor a detection on them as a false positive, the VOC rule (detectron2 does the same
    for its COCO-style AP on VOC).
    """
    images, annotations = [], []
    for rec in records:
        images.append({"id": rec["image_id"], "width": rec["width"], "height": rec["height"]})
        for obj in rec["annotations"]:
            x0, y0, x1, y1 = (float(v) for v in obj["bbox"])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": rec["image_id"],
                    "category_id": label_to_category_id[obj["label"]],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": int(bool(obj.get("iscrowd", 0) or obj.get("difficult", 0))),
                }
            )
    categories = [{"id": label_to_category_id[k], "name": name} for k, name in enumerate(class_names, 1)]
    return _quiet_coco({"images": images, "annotations": annotations, "categories": categories})


def load_detections(path: Path) -> List[Dict]:
    """A COCO results file: a JSON list of ``{image_id, category_id, bbox: [x, y, w, h], score}``."""
    detections = read_json(path, "results file")
    if not isinstance(detections, list):
        raise EvaluationError(
            f"{path}: a results file is a JSON list of detections (COCO results format), "
            f"got {type(detections).__name__}"
        )
    return detections


def check_detections(
    detections: Sequence[Mapping], image_ids: Collection[int], category_ids: Collection[int], source: Any
) -> None:
    """Refuse detections that pycocotools would crash on or silently misread.

    Category ids must be the dataset's own (COCO's 1..90, VOC's 1..20), not contiguous labels.
    An empty list is valid, with a warning: every AP is then 0.
    """
    if not detections:
        logger.warning("no detections in %s: every AP is 0", source)
        return
    _require_fields(detections, DETECTION_FIELDS, source, "detection")
    image_ids, category_ids = set(image_ids), set(category_ids)
    for i, det in enumerate(detections):
        if not _is_number(det["score"]):
            raise EvaluationError(f"{source}: detection #{i} has score {det['score']!r}; it must be a finite number")
        if not _is_id_in(det["image_id"], image_ids):
            raise EvaluationError(
                f"{source}: detection #{i} has image_id {det['image_id']!r}, which is not an image of the "
                "ground truth; evaluate against the dataset the detections were made on"
            )
        if not _is_id_in(det["category_id"], category_ids):
            raise EvaluationError(
                f"{source}: detection #{i} has category_id {det['category_id']!r}, not one of the ground truth's "
                f"{len(category_ids)} category ids; results must use the dataset's own ids, not contiguous labels"
            )


def _results_coco(coco_gt: COCO, detections: Sequence[Mapping]) -> COCO:
    if not detections:  # COCO.loadRes indexes the first result, so it cannot take an empty list
        gt = coco_gt.dataset
        return _quiet_coco({"images": gt["images"], "categories": gt["categories"], "annotations": []})
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_gt.loadRes([dict(d) for d in detections])  # copies: loadRes adds fields in place


def _mean_valid(precision: np.ndarray) -> Optional[float]:
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else None


def _cocoeval(coco_gt: COCO, detections: Sequence[Mapping], backend: str):
    """The backend's COCOeval for boxes, not yet run."""
    if backend == "pycocotools":
        return COCOeval(coco_gt, _results_coco(coco_gt, detections), "bbox")
    if backend != "faster-coco-eval":
        raise EvaluationError(f"unknown COCO backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    try:
        import faster_coco_eval
    except ImportError:
        raise EvaluationError(
            "--backend faster-coco-eval needs the faster-coco-eval package: pip install 'resnet-det[fast-eval]'"
        ) from None

    # Copies one level deep: loading and evaluating add fields to the annotations in place.
    dataset = coco_gt.dataset
    gt = faster_coco_eval.COCO({**dataset, "annotations": [dict(a) for a in dataset["annotations"]]})
    if detections:
        results = gt.loadRes([{**d, "bbox": list(d["bbox"])} for d in detections])
    else:
        results = faster_coco_eval.COCO(
            {"images": dataset["images"], "categories": dataset["categories"], "annotations": []}
        )
    return faster_coco_eval.COCOeval_faster(gt, results, "bbox", print_function=print)


def evaluate_coco(
    coco_gt: COCO,
    detections: Sequence[Mapping],
    img_ids: Optional[Collection[int]] = None,
    backend: str = "pycocotools",
) -> Dict:
    """``COCOeval`` for boxes on ``img_ids`` (default: every ground-truth image).

    Returns the report's parts: ``summary`` (the 12 numbers of ``COCOeval.stats`` by name),
    ``per_class`` rows (``name``, ``category_id``, ``AP``, ``AP50``, ``num_gt`` non-crowd boxes;
    AP is None for a category without ground truth), ``pr_curves`` (interpolated precision at
    the 101 recall thresholds, IoU 0.5, per category with ground truth) and ``cocoeval_summary``
    (the 12 lines ``COCOeval.summarize`` printed; faster-coco-eval prints two more, AR at IoU
    0.5 and 0.75, left out). ``backend`` is ``pycocotools`` or ``faster-coco-eval``.
    """
    coco_eval = _cocoeval(coco_gt, detections, backend)
    if img_ids is not None:
        coco_eval.params.imgIds = sorted(img_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        coco_eval.summarize()

    params = coco_eval.params
    # precision: [IoU threshold, recall threshold, category, area range, max detections]
    precision = coco_eval.eval["precision"][:, :, :, params.areaRngLbl.index("all"), -1]
    iou50 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.5))[0])
    non_crowd = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=params.imgIds, iscrowd=0))
    num_gt = Counter(ann["category_id"] for ann in non_crowd)
    per_class, curves = [], {}
    for k, cat_id in enumerate(params.catIds):
        name = coco_gt.cats[cat_id]["name"]
        ap = _mean_valid(precision[:, :, k])
        ap50 = _mean_valid(precision[iou50, :, k])
        per_class.append({"name": name, "category_id": int(cat_id), "AP": ap, "AP50": ap50, "num_gt": num_gt[cat_id]})
        if ap is not None:
            curves[name] = [round(float(p), 4) for p in precision[iou50, :, k]]
    return {
        "summary": {name: float(v) for name, v in zip(STAT_NAMES, coco_eval.stats)},
        "per_class": per_class,
        "pr_curves": {"recall": [round(float(r), 4) for r in params.recThrs], "precision": curves},
        "cocoeval_summary": printed.getvalue().splitlines()[: len(STAT_NAMES)],
    }
