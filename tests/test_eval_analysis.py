"""Deployment thresholds, the confusion matrix, and both VOC metrics in every report."""

import pytest
from test_eval_tide import det, ground_truth

from resnet_det.evaluation.coco import _quiet_coco
from resnet_det.evaluation.confusion import confusion_matrix
from resnet_det.evaluation.evaluator import evaluate_detections, evaluate_with_coco_file
from resnet_det.evaluation.thresholds import threshold_analysis


def boxes_at(x):
    return [float(x), 0.0, 10.0, 10.0]


def six_detections():
    """Four objects of class a on image 1; detections scored .9 .8 .7 .6 .3 .2, true, false,
    true, true, false, true."""
    gt = ground_truth(*[(1, 1, boxes_at(20 * k)) for k in range(4)])
    dets = [
        det(1, 1, boxes_at(0), 0.9), det(1, 1, boxes_at(90), 0.8), det(1, 1, boxes_at(20), 0.7),
        det(1, 1, boxes_at(40), 0.6), det(1, 1, [0.0, 50.0, 10.0, 10.0], 0.3), det(1, 1, boxes_at(60), 0.2),
    ]  # fmt: skip
    return gt, dets


def test_precision_recall_f1_at_a_score_and_the_best_f1():
    gt, dets = six_detections()
    t = threshold_analysis(gt, dets, score_thresh=0.5, target_precision=0.9)
    at = t["overall"]["at_score"]
    assert (at["tp"], at["fp"], at["fn"]) == (3, 1, 1)
    assert (
        at["precision"] == pytest.approx(0.75)
        and at["recall"] == pytest.approx(0.75)
        and at["f1"] == pytest.approx(0.75)
    )
    # keeping all six: precision 4/6, recall 1, F1 0.8, the best.
    best = t["overall"]["best_f1"]
    assert best["score"] == pytest.approx(0.2) and best["f1"] == pytest.approx(0.8) and best["recall"] == 1.0
    assert t["per_class"][0]["best_f1"] == best and t["per_class"][0]["name"] == "a"


def test_the_score_for_a_target_precision_takes_the_most_recall():
    gt, dets = six_detections()
    at_90 = threshold_analysis(gt, dets, target_precision=0.9)["overall"]["at_precision"]
    assert at_90["score"] == pytest.approx(0.9) and at_90["recall"] == pytest.approx(0.25)
    at_70 = threshold_analysis(gt, dets, target_precision=0.7)["overall"]["at_precision"]
    assert at_70["score"] == pytest.approx(0.6) and at_70["precision"] == pytest.approx(0.75)
    assert threshold_analysis(gt, dets, target_precision=0.75)["overall"]["at_precision"]["score"] == 0.6  # reached
    assert threshold_analysis(gt, dets[1:2], target_precision=0.5)["overall"]["at_precision"] is None


def test_the_curves_against_the_score():
    gt, dets = six_detections()
    c = threshold_analysis(gt, dets)["curves"]
    k = c["score"].index(0.5)
    assert (c["precision"][k], c["recall"][k], c["f1"][k]) == (0.75, 0.75, 0.75)
    assert c["recall"][0] == 1.0 and c["precision"][-1] == 0.0  # nothing scores >= 1.0


def test_the_confusion_matrix_counts_each_object_once():
    a, b = boxes_at(0), boxes_at(40)
    gt = ground_truth((1, 1, a), (1, 2, b), (2, 1, a), crowd=[(3, 1, [0.0, 0.0, 50.0, 50.0])])
    dets = [
        det(1, 1, a, 0.9),  # hit
        det(1, 1, b, 0.8),  # a b detected as a
        det(1, 2, boxes_at(80), 0.7),  # background detected as b
        det(2, 1, a, 0.3),  # below the score: the object counts as missed
        det(3, 1, [5.0, 5.0, 10.0, 10.0], 0.9),  # on a crowd region: ignored
    ]
    m = confusion_matrix(gt, dets, score_thresh=0.5)
    assert m["rows"] == ["a", "b", "background"] and m["columns"] == ["a", "b", "missed"]
    assert m["counts"] == [[1, 0, 1], [1, 0, 0], [0, 1, 0]]
    assert confusion_matrix(gt, dets, score_thresh=0.2)["counts"][0] == [2, 0, 0]


def test_every_report_holds_both_voc_metrics_and_the_analysis(tmp_path):
    import json

    from test_eval_report import detections_of, voc_like

    records, metadata = voc_like()
    dets = [d for d in detections_of(records) if d["image_id"] != 2]
    report = evaluate_detections(dets, records, metadata, metric="coco", explain=True)
    voc07 = evaluate_detections(dets, records, metadata, metric="voc07")["summary"]["mAP"]
    voc10 = evaluate_detections(dets, records, metadata, metric="voc10")["summary"]["mAP"]
    assert report["voc"]["voc07"]["mAP"] == pytest.approx(voc07) and report["voc"]["voc10"]["mAP"] == pytest.approx(
        voc10
    )
    assert voc07 != voc10 and report["voc"]["voc07"]["AP"]["bird"] is None
    assert {"tide", "thresholds", "confusion", "images"} <= report.keys()
    (image,) = report["images"]  # the one with an error: its aeroplane missed
    assert {k: image[k] for k in ("image_id", "fp", "fn", "tp", "file_name")} == {
        "image_id": 2,
        "fp": 0,
        "fn": 1,
        "tp": 0,
        "file_name": "/voc/2.jpg",
    }
    assert image["boxes"] == [{"bbox": [5.0, 5.0, 35.0, 35.0], "category_id": 1, "score": None, "outcome": "missed"}]
    # and from a bare COCO file, where VOC's rules still apply at IoU 0.5
    gt = _quiet_coco({"images": [{"id": 1}], "categories": [{"id": 5, "name": "x"}], "annotations": [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0}]})  # fmt: skip
    (tmp_path / "gt.json").write_text(json.dumps(gt.dataset))
    coco = evaluate_with_coco_file([det(1, 5, [0, 0, 10, 10], 0.9)], tmp_path / "gt.json", "d", explain=True)
    assert coco["voc"]["voc07"]["mAP"] == coco["voc"]["voc10"]["mAP"] == 1.0 and coco["tide"]["AP50"] == 1.0
