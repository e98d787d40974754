"""Which metric a dataset is scored with, and the report dict that scoring produces.

The report is plain data (JSON-ready): ``metric``, ``dataset``, ``checkpoint``, ``config_hash``
(the last two for the caller to fill in), ``date``, ``num_images``, ``num_detections``,
``summary`` (the headline numbers under their usual names: ``AP`` ... ``ARl`` from pycocotools,
plus ``mAP`` for the VOC metrics), ``per_class`` rows, ``cocoeval_summary`` (the lines pycocotools
printed) and ``pr_curves`` (drawn by ``report.write_report``, not stored: ``detections.json``
recomputes them). Numbers are fractions in 0..1.
"""

from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

from resnet_det.errors import EvaluationError
from resnet_det.evaluation.coco import check_detections, coco_gt_from_records, evaluate_coco, load_coco_gt
from resnet_det.evaluation.voc import evaluate_voc

METRICS = ("coco", "voc07", "voc10")


def default_metric(metadata: Mapping) -> str:
    """coco for COCO-format data; voc07 for VOC 2007 (11-point AP); voc10 for later VOC years (area AP)."""
    if metadata.get("evaluator") == "voc":
        return "voc07" if str(metadata.get("year")) == "2007" else "voc10"
    return "coco"


def _report(metric: str, dataset: str, num_images: int, num_detections: int, parts: Mapping) -> Dict:
    return {
        "metric": metric,
        "dataset": dataset,
        "checkpoint": None,
        "config_hash": None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "num_images": num_images,
        "num_detections": num_detections,
        **parts,
    }


def evaluate_detections(
    detections: Sequence[Mapping],
    records: Sequence[Mapping],
    metadata: Mapping,
    metric: Optional[str] = None,
    source: str = "the detections",
) -> Dict:
    """Score COCO-format ``detections`` on a dataset's ``records``; ``metric`` None = its default.

    COCO-style numbers come from the dataset's own annotations file when it has one (so they are
    the official ones), else from its records. The VOC metrics also report those COCO-style
    numbers (difficult objects ignored), as detectron2 does. ``source`` names the detections in
    error messages.
    """
    metric = metric or default_metric(metadata)
    if metric not in METRICS:
        raise EvaluationError(f"unknown metric '{metric}': choose one of {', '.join(METRICS)}")
    name = metadata["name"]
    if not any(rec["annotations"] for rec in records):
        raise EvaluationError(f"dataset {name} has no annotated objects: there is nothing to evaluate against")
    class_names = list(metadata["class_names"])
    label_to_category_id = {int(k): int(v) for k, v in metadata["label_to_category_id"].items()}
    image_ids = {rec["image_id"] for rec in records}
    if metric == "coco" and metadata.get("annotations_file"):
        coco_gt = load_coco_gt(Path(metadata["annotations_file"]))
    else:
        coco_gt = coco_gt_from_records(records, class_names, label_to_category_id)
    check_detections(detections, image_ids, set(label_to_category_id.values()), source)
    parts = evaluate_coco(coco_gt, detections, img_ids=image_ids)
    if metric != "coco":
        voc = evaluate_voc(records, detections, class_names, label_to_category_id, use_07_metric=metric == "voc07")
        summary = {**voc["summary"], **parts["summary"]}
        parts = {**voc, "summary": summary, "cocoeval_summary": parts["cocoeval_summary"]}
    return _report(metric, name, len(image_ids), len(detections), parts)


def evaluate_with_coco_file(detections: Sequence[Mapping], annotations_file: Path, source: str) -> Dict:
    """Score COCO-format ``detections`` against a COCO instances file with pycocotools."""
    coco_gt = load_coco_gt(annotations_file)
    check_detections(detections, coco_gt.getImgIds(), coco_gt.getCatIds(), source)
    parts = evaluate_coco(coco_gt, detections)
    return _report("coco", str(annotations_file), len(coco_gt.getImgIds()), len(detections), parts)
