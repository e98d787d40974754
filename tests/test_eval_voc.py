"""The PASCAL VOC metric: hand-checkable cases, the devkit's conventions, and the real VOC XML."""

import pytest

from resnet_det.evaluation.evaluator import evaluate_detections
from resnet_det.evaluation.voc import evaluate_voc, voc_ap

CLASSES = ["cat", "dog"]
IDS = {1: 1, 2: 2}


def record(image_id, *objects):
    """A dataset record; objects are (label, [x0, y0, x1, y1]) or (label, box, difficult)."""
    anns = [
        {"bbox": [float(v) for v in obj[1]], "label": obj[0], "iscrowd": 0, "difficult": obj[2] if len(obj) > 2 else 0}
        for obj in objects
    ]
    return {"file_name": f"/{image_id}.jpg", "image_id": image_id, "height": 200, "width": 200, "annotations": anns}


def det(image_id, label, box, score):
    """A COCO-format detection of an [x0, y0, x1, y1] box in the records' frame."""
    x0, y0, x1, y1 = box
    return {"image_id": image_id, "category_id": IDS[label], "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}


def voc(records, detections, use_07_metric):
    return evaluate_voc(records, detections, CLASSES, IDS, use_07_metric=use_07_metric)


def ap_of(result, name="cat"):
    return next(row["AP"] for row in result["per_class"] if row["name"] == name)


A, B, C, D = [10, 10, 50, 50], [60, 60, 120, 110], [0, 100, 40, 190], [130, 20, 190, 80]
FAR = [150, 150, 199, 199]  # overlaps none of A..D


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_a_perfect_detector_scores_one(use_07_metric):
    records = [record(1, (1, A), (2, B)), record(2, (1, C), (1, D), (2, A))]
    dets = [det(r["image_id"], a["label"], a["bbox"], 0.9) for r in records for a in r["annotations"]]
    result = voc(records, dets, use_07_metric)
    assert [row["AP"] for row in result["per_class"]] == [1.0, 1.0]
    assert [row["num_gt"] for row in result["per_class"]] == [3, 2]
    assert result["summary"]["mAP"] == 1.0


def test_a_duplicate_detection_is_a_false_positive():
    records = [record(1, (1, A)), record(2, (1, B))]
    dets = [det(1, 1, A, 0.9), det(1, 1, A, 0.8), det(2, 1, B, 0.7)]
    # In score order: TP, FP (A is already taken), TP. recall 1/2, 1/2, 1; precision 1, 1/2, 2/3.
    # Area: recall 0 -> 1/2 at envelope precision 1, 1/2 -> 1 at 2/3: 1/2 + 1/3 = 5/6.
    # 11-point: levels 0..0.5 (six) reach precision 1, levels 0.6..1 (five) 2/3: (6 + 10/3) / 11 = 28/33.
    assert ap_of(voc(records, dets, use_07_metric=False)) == pytest.approx(5 / 6)
    assert ap_of(voc(records, dets, use_07_metric=True)) == pytest.approx(28 / 33)
    without_duplicate = [dets[0], dets[2]]
    assert ap_of(voc(records, without_duplicate, use_07_metric=False)) == 1.0
    curve = voc(records, dets, use_07_metric=False)["pr_curves"]["precision"]["cat"]
    assert curve[0] == 1.0 and curve[100] == pytest.approx(2 / 3, abs=1e-4)


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_a_difficult_object_is_neither_a_miss_nor_a_false_positive(use_07_metric):
    records = [record(1, (1, A), (1, D, 1))]
    # Not detecting the difficult object is no miss: one non-difficult object, found.
    assert ap_of(voc(records, [det(1, 1, A, 0.5)], use_07_metric)) == 1.0
    # A detection on it, scored above the true positive, is no false positive either (if it
    # were, precision at full recall would be 1/2 and AP below 1).
    result = voc(records, [det(1, 1, D, 0.9), det(1, 1, A, 0.5)], use_07_metric)
    assert ap_of(result) == 1.0
    assert result["per_class"][0]["num_gt"] == 1


def test_the_worked_example_by_hand():
    # 4 objects of one class in two images; 5 detections, in descending score:
    #   0.9 TP, 0.8 FP, 0.7 TP, 0.6 FP, 0.5 TP  (object D is never found)
    # cumulative TP 1 1 2 2 3, FP 0 1 1 2 2
    # recall    = TP / 4          = 0.25  0.25  0.5   0.5   0.75
    # precision = TP / (TP + FP)  = 1     0.5   2/3   0.5   0.6
    # VOC2007, 11 points: the best precision at recall >= t for t = 0, 0.1, ..., 1:
    #   t = 0, 0.1, 0.2            -> 1     (3 levels)
    #   t = 0.3, 0.4, 0.5          -> 2/3   (3 levels)
    #   t = 0.6, 0.7               -> 0.6   (2 levels)
    #   t = 0.8, 0.9, 1            -> 0     (recall never reaches them)
    #   AP = (3 * 1 + 3 * 2/3 + 2 * 0.6) / 11 = 6.2 / 11 = 31/55
    # VOC2010+, area: the precision envelope (best precision at any higher recall) is
    #   1 up to recall 0.25, 2/3 up to 0.5, 0.6 up to 0.75, then 0:
    #   AP = 0.25 * 1 + 0.25 * 2/3 + 0.25 * 0.6 = 0.25 + 1/6 + 0.15 = 17/30
    records = [record(1, (1, A), (1, B)), record(2, (1, C), (1, D))]
    dets = [det(1, 1, A, 0.9), det(1, 1, FAR, 0.8), det(2, 1, C, 0.7), det(2, 1, FAR, 0.6), det(1, 1, B, 0.5)]
    assert ap_of(voc(records, dets, use_07_metric=True)) == pytest.approx(31 / 55)
    assert ap_of(voc(records, dets, use_07_metric=False)) == pytest.approx(17 / 30)
    # The same numbers straight from the recall/precision lists above.
    recall, precision = [0.25, 0.25, 0.5, 0.5, 0.75], [1, 0.5, 2 / 3, 0.5, 0.6]
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx(31 / 55)
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(17 / 30)


def test_boxes_are_measured_in_the_devkits_inclusive_pixels():
    # Ground truth: pixels xmin=1..xmax=4, ymin=1..ymax=10 in the devkit's 1-based terms; our
    # record stores x0 = xmin - 1, x1 = xmax: [0, 0, 4, 10].
    records = [record(1, (1, [0, 0, 4, 10]))]
    # Detection on pixels 2..5: width 5 - 2 + 1 = 4, intersection 4 - 2 + 1 = 3 columns, so
    # IoU = 30 / (40 + 40 - 30) = 0.6 > 0.5: a true positive. (Taking 1-based corners as
    # continuous coordinates would give 2 * 9 / (27 + 27 - 18) = 0.5: not above the threshold.)
    assert ap_of(voc(records, [det(1, 1, [1, 0, 5, 10], 0.9)], use_07_metric=False)) == 1.0
    # Pixels 2..4 against 1..3 (record [0, 0, 3, 10]): IoU = 2 * 10 / (30 + 30 - 20) = 0.5,
    # not above 0.5 as the devkit requires: a false positive.
    records = [record(1, (1, [0, 0, 3, 10]))]
    assert ap_of(voc(records, [det(1, 1, [1, 0, 4, 10], 0.9)], use_07_metric=False)) == 0.0


def test_a_class_without_ground_truth_has_no_ap_and_stays_out_of_the_mean():
    records = [record(1, (1, A)), record(2, (1, B))]
    dets = [det(1, 1, A, 0.9), det(2, 1, B, 0.9), det(2, 2, B, 0.8)]  # and a "dog" where there is none
    result = voc(records, dets, use_07_metric=False)
    assert result["per_class"][1] == {"name": "dog", "category_id": 2, "AP": None, "num_gt": 0}
    assert result["summary"]["mAP"] == 1.0
    assert set(result["pr_curves"]["precision"]) == {"cat"}


def test_a_detection_in_another_image_is_a_false_positive():
    records = [record(1, (1, A)), record(2)]
    result = voc(records, [det(2, 1, A, 0.9), det(1, 1, A, 0.8)], use_07_metric=False)
    assert ap_of(result) == pytest.approx(0.5)  # recall 1 reached at precision 1/2


@pytest.fixture
def voc_mini(shared_data):
    from resnet_det.data.catalog import get_dataset

    return lambda name: get_dataset(name, root=shared_data / "voc_mini")


def perfect_detections(records, label_to_category_id):
    return [
        {
            "image_id": rec["image_id"],
            "category_id": label_to_category_id[obj["label"]],
            "bbox": [obj["bbox"][0], obj["bbox"][1], obj["bbox"][2] - obj["bbox"][0], obj["bbox"][3] - obj["bbox"][1]],
            "score": 0.9,
        }
        for rec in records
        for obj in rec["annotations"]
    ]


@pytest.mark.parametrize("name, metric", [("voc_2007_test", "voc07"), ("voc_2012_trainval", "voc10")])
def test_real_voc_annotations(voc_mini, name, metric):
    records, metadata = voc_mini(name)
    present = {metadata["class_names"][o["label"] - 1] for r in records for o in r["annotations"] if not o["difficult"]}
    perfect = perfect_detections(records, metadata["label_to_category_id"])  # difficult objects included

    report = evaluate_detections(perfect, records, metadata)
    assert report["metric"] == metric  # chosen by the dataset's year
    assert {row["name"] for row in report["per_class"] if row["AP"] is not None} == present
    assert all(row["AP"] == 1.0 for row in report["per_class"] if row["name"] in present)
    assert report["summary"]["mAP"] == 1.0
    assert report["summary"]["AP"] == 1.0  # COCO-style, difficult objects ignored as crowd regions

    # Perturbed: every person moved down by the image height, below every object (IoU 0):
    # person AP 0, the other classes stay at 1.
    person = metadata["label_to_category_id"][metadata["class_names"].index("person") + 1]
    height = {rec["image_id"]: rec["height"] for rec in records}
    moved = [
        {**d, "bbox": [x, y + height[d["image_id"]], w, h]} if d["category_id"] == person else d
        for d in perfect
        for x, y, w, h in [d["bbox"]]
    ]
    report = evaluate_detections(moved, records, metadata)
    aps = {row["name"]: row["AP"] for row in report["per_class"] if row["AP"] is not None}
    assert aps.pop("person") == 0.0
    assert set(aps.values()) == {1.0}
    assert report["summary"]["mAP"] == pytest.approx((len(present) - 1) / len(present))
