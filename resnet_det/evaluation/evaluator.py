"""Which metric a dataset is scored with, and the report dict that scoring produces.

The report is plain data (JSON-ready): ``metric``, ``dataset``, ``checkpoint``, ``config_hash``
(the last two for the caller to fill in), ``date``, ``num_images``, ``num_detections``,
``summary`` (the headline numbers under their usual names: ``AP`` ... ``ARl`` from pycocotools,
plus ``mAP`` for the VOC metrics), ``per_class`` rows, ``cocoeval_summary`` (the lines pycocotools
printed) and ``pr_curves`` (drawn by ``report.write_report``, not stored: ``detections.json``
recomputes them). Numbers are fractions in 0..1.

Metrics are a registry (``METRICS``): ``coco``, ``voc07`` and ``voc10`` are built in, and a user's
metric, registered under a new name, is chosen with ``test.metric`` or ``tools/eval.py --metric``:

    @METRICS.register("my_metric")
    def my_metric(detections, records, metadata, image_ids) -> dict: ...  # summary, per_class, ...

The built-in metrics also take ``backend`` (``pycocotools``, the default and reference, or
``faster-coco-eval``) for their COCO-style numbers. With ``explain=True`` the report also holds
``voc``, ``tide``, ``thresholds``, ``confusion`` and ``images`` (``analysis.explain``).
"""

import inspect
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence, Set

from backbones import Registry
from resnet_det.config.validate import register_choices
from resnet_det.errors import EvaluationError
from resnet_det.evaluation.analysis import explain as explain_parts
from resnet_det.evaluation.coco import (
    BACKENDS,
    check_detections,
    coco_gt_from_records,
    evaluate_coco,
    load_coco_gt,
)
from resnet_det.evaluation.voc import evaluate_voc

# fn(detections, records, metadata, image_ids) -> the report's parts (summary, per_class, ...).
MetricFn = Callable[[Sequence[Mapping], Sequence[Mapping], Mapping, Set[int]], Dict]
METRICS: Registry[MetricFn] = Registry(
    "metric",
    EvaluationError,
    listing="choose one of",
    hint="register yours with resnet_det.evaluation.METRICS.register(name)",
)
register_choices("test.metric", METRICS)


def default_metric(metadata: Mapping) -> str:
    """coco for COCO-format data; voc07 for VOC 2007 (11-point AP); voc10 for later VOC years (area AP)."""
    if metadata.get("evaluator") == "voc":
        return "voc07" if str(metadata.get("year")) == "2007" else "voc10"
    return "coco"


def _report(metric: str, dataset: str, num_images: int, num_detections: int, parts: Mapping, backend: str) -> Dict:
    return {
        "metric": metric,
        "backend": backend,
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
    backend: str = "pycocotools",
    explain: bool = False,
    score_thresh: float = 0.5,
    target_precision: float = 0.9,
) -> Dict:
    """Score COCO-format ``detections`` on a dataset's ``records``; ``metric`` None = its default.

    COCO-style numbers come from the dataset's own annotations file when it has one (so they are
    the official ones), else from its records. The VOC metrics also report those COCO-style
    numbers (difficult objects ignored), as detectron2 does. ``source`` names the detections in
    error messages. ``explain`` adds the analysis at ``score_thresh`` and ``target_precision``.
    """
    metric = metric or default_metric(metadata)
    score = METRICS.get(metric)
    _check_backend(backend, metric, score)
    name = metadata["name"]
    if not any(rec["annotations"] for rec in records):
        raise EvaluationError(f"dataset {name} has no annotated objects: there is nothing to evaluate against")
    image_ids = {rec["image_id"] for rec in records}
    check_detections(detections, image_ids, set(_label_to_category_id(metadata).values()), source)
    kwargs = {"backend": backend} if backend != BACKENDS[0] else {}
    parts = score(detections, records, metadata, image_ids, **kwargs)
    report = _report(metric, name, len(image_ids), len(detections), parts, backend)
    if explain:
        coco_gt = _coco_gt(records, metadata, official=True)
        report.update(
            explain_parts(
                coco_gt, detections, records, _label_to_category_id(metadata), image_ids, score_thresh, target_precision
            )
        )
    return report


def _check_backend(backend: str, metric: str, score: MetricFn) -> None:
    if backend not in BACKENDS:
        raise EvaluationError(f"unknown COCO backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend != BACKENDS[0] and "backend" not in inspect.signature(score).parameters:
        raise EvaluationError(f"metric {metric!r} takes no COCO backend: leave --backend at {BACKENDS[0]}")


def _label_to_category_id(metadata: Mapping) -> Dict[int, int]:
    return {int(k): int(v) for k, v in metadata["label_to_category_id"].items()}


def _coco_gt(records, metadata, official: bool):
    """The dataset's own annotations file where it has one and ``official``, else its records."""
    if official and metadata.get("annotations_file"):
        return load_coco_gt(Path(metadata["annotations_file"]))
    return coco_gt_from_records(records, list(metadata["class_names"]), _label_to_category_id(metadata))


def _coco_parts(detections, records, metadata, image_ids, official: bool, backend: str = BACKENDS[0]) -> Dict:
    """COCO-style numbers (see ``_coco_gt`` for the ground truth)."""
    return evaluate_coco(_coco_gt(records, metadata, official), detections, img_ids=image_ids, backend=backend)


@METRICS.register("coco")
def coco_metric(detections, records, metadata, image_ids, backend: str = BACKENDS[0]) -> Dict:
    return _coco_parts(detections, records, metadata, image_ids, official=True, backend=backend)


def _voc_metric(use_07_metric: bool) -> MetricFn:
    def voc_metric(detections, records, metadata, image_ids, backend: str = BACKENDS[0]) -> Dict:
        coco = _coco_parts(detections, records, metadata, image_ids, official=False, backend=backend)
        class_names, label_to_category_id = list(metadata["class_names"]), _label_to_category_id(metadata)
        voc = evaluate_voc(records, detections, class_names, label_to_category_id, use_07_metric=use_07_metric)
        return {**voc, "summary": {**voc["summary"], **coco["summary"]}, "cocoeval_summary": coco["cocoeval_summary"]}

    return voc_metric


METRICS.register("voc07", _voc_metric(use_07_metric=True))  # 11-point AP
METRICS.register("voc10", _voc_metric(use_07_metric=False))  # area under the PR curve


def evaluate_with_coco_file(
    detections: Sequence[Mapping],
    annotations_file: Path,
    source: str,
    backend: str = "pycocotools",
    explain: bool = False,
    score_thresh: float = 0.5,
    target_precision: float = 0.9,
) -> Dict:
    """Score COCO-format ``detections`` against a COCO instances file with pycocotools (or
    ``backend``); ``explain`` as in ``evaluate_detections``."""
    _check_backend(backend, "coco", coco_metric)
    coco_gt = load_coco_gt(annotations_file)
    check_detections(detections, coco_gt.getImgIds(), coco_gt.getCatIds(), source)
    parts = evaluate_coco(coco_gt, detections, backend=backend)
    report = _report("coco", str(annotations_file), len(coco_gt.getImgIds()), len(detections), parts, backend)
    if explain:
        report.update(explain_parts(coco_gt, detections, score_thresh=score_thresh, target_precision=target_precision))
    return report
