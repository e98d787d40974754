"""Detection metrics: COCO-style through pycocotools (or faster-coco-eval), and the official
PASCAL VOC AP; and what explains them: TIDE's errors, operating points, the confusion matrix.

``evaluate_detections`` scores COCO-format detections on a dataset's records and returns the
report dict; ``write_report`` turns it into report.json, report.md and a precision-recall plot.
"""

from resnet_det.evaluation.coco import BACKENDS, STAT_NAMES, evaluate_coco, load_coco_gt, load_detections
from resnet_det.evaluation.evaluator import METRICS, default_metric, evaluate_detections, evaluate_with_coco_file
from resnet_det.evaluation.report import (
    compare_reports,
    format_table,
    load_report,
    write_compare_html,
    write_report,
)
from resnet_det.evaluation.voc import evaluate_voc, voc_ap

__all__ = [
    "BACKENDS",
    "METRICS",
    "STAT_NAMES",
    "compare_reports",
    "default_metric",
    "evaluate_coco",
    "evaluate_detections",
    "evaluate_voc",
    "evaluate_with_coco_file",
    "format_table",
    "load_coco_gt",
    "load_detections",
    "load_report",
    "voc_ap",
    "write_compare_html",
    "write_report",
]
