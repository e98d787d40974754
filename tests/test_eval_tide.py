"""TIDE error analysis: each error type on a hand-built case, and tidecv's own numbers on real data."""

import json

import pytest

from resnet_det.evaluation.coco import _quiet_coco, load_coco_gt
from resnet_det.evaluation.tide import ERROR_TYPES, tide_errors

BOX = [0.0, 0.0, 10.0, 10.0]
SHIFTED = [5.0, 0.0, 10.0, 10.0]  # IoU 50 / 150 = 1/3 with BOX: between bg 0.1 and pos 0.5
FAR = [50.0, 50.0, 10.0, 10.0]  # IoU 0 with everything


def ground_truth(*objects, crowd=()):
    """A COCO ground truth of images 1..4 (100 x 100) and classes 1, 2; ``objects`` are
    (image, class, box), ``crowd`` the same for crowd regions."""
    anns = [
        {"id": i, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": int(i > len(objects))}
        for i, (im, c, b) in enumerate([*objects, *crowd], 1)
    ]
    images = [{"id": i, "width": 100, "height": 100} for i in range(1, 5)]
    return _quiet_coco(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    )


def det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def only(result, kind, count=1):
    """The counts are ``count`` of ``kind`` and none of the others."""
    assert result["counts"] == {k: (count if k == kind else 0) for k in ERROR_TYPES}


TWO = ground_truth((1, 1, BOX), (2, 2, BOX))
FOUND_2 = det(2, 2, BOX, 0.9)


def test_perfect_detections_have_no_errors():
    r = tide_errors(TWO, [det(1, 1, BOX, 0.8), FOUND_2])
    assert r["AP50"] == pytest.approx(1.0) and r["num_fp"] == r["num_fn"] == 0
    only(r, None, 0)
    assert all(v == 0 for v in r["dAP"].values()) and r["special_dAP"] == {"FP": 0.0, "FN": 0.0}


def test_localisation_error_fixed_is_the_true_positive_it_missed():
    r = tide_errors(TWO, [det(1, 1, SHIFTED, 0.8), FOUND_2])
    only(r, "loc")  # not also a miss: fixing the box finds that object
    assert r["AP50"] == pytest.approx(0.5) and r["dAP"]["loc"] == pytest.approx(0.5)
    assert r["num_fp"] == 1 and r["num_fn"] == 1
    assert r["errors"][0]["gt_bbox"] == BOX and r["per_class"] == {1: {**dict.fromkeys(ERROR_TYPES, 0), "loc": 1}}


def test_classification_error_moves_to_the_right_class():
    r = tide_errors(TWO, [det(1, 2, BOX, 0.8), FOUND_2])
    only(r, "cls")
    # class a: its object unfound (AP 0); class b: a hit above the false positive (AP 1).
    assert r["AP50"] == pytest.approx(0.5) and r["dAP"]["cls"] == pytest.approx(0.5)
    assert r["dAP"]["loc"] == r["dAP"]["miss"] == 0


def test_only_the_best_of_two_classification_errors_on_one_object_is_fixed():
    gt = ground_truth((1, 1, BOX), (2, 1, BOX), (3, 2, BOX))
    dets = [det(1, 2, BOX, 0.95), det(1, 2, [0.5, 0, 10, 10], 0.6), det(2, 1, BOX, 0.7), det(3, 2, BOX, 0.9)]
    r = tide_errors(gt, [*dets, det(4, 1, BOX, 0.8)])  # and a background box of class a
    assert r["counts"] == {**dict.fromkeys(ERROR_TYPES, 0), "cls": 2, "bkg": 1}
    # before: a = [FP .8, TP .7] of 2 objects, b = [FP .95, TP .9, FP .6] of 1.
    assert r["AP50"] == pytest.approx((51 * 0.5 / 101 + 0.5) / 2)
    # fixed: a gets the 0.95 one as a hit, [TP .95, FP .8, TP .7]; b keeps only its hit.
    assert r["AP50"] + r["dAP"]["cls"] == pytest.approx(((51 + 50 * 2 / 3) / 101 + 1.0) / 2)


def test_duplicate_error_scored_above_a_hit():
    gt = ground_truth((1, 1, BOX), (3, 1, BOX))
    r = tide_errors(gt, [det(1, 1, BOX, 0.9), det(1, 1, [0.5, 0, 10, 10], 0.8), det(3, 1, BOX, 0.7)])
    only(r, "dupe")
    # precision 1 up to recall 0.5 (51 of the 101 recall points), 2/3 after it.
    assert r["AP50"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert r["dAP"]["dupe"] == pytest.approx(1 - r["AP50"]) and r["special_dAP"]["FP"] == pytest.approx(
        r["dAP"]["dupe"]
    )


def test_background_error():
    r = tide_errors(TWO, [det(1, 1, FAR, 0.95), det(1, 1, BOX, 0.9), FOUND_2])
    only(r, "bkg")
    assert r["AP50"] == pytest.approx((0.5 + 1) / 2) and r["dAP"]["bkg"] == pytest.approx(0.25)
    assert r["errors"][0]["gt_bbox"] is None


def test_both_error_wrong_class_and_poor_box():
    r = tide_errors(TWO, [det(1, 2, SHIFTED, 0.95), det(1, 1, BOX, 0.9), FOUND_2])
    only(r, "both")
    # class b: the false positive ranks above its hit: AP 0.5; removing it gives 1.
    assert r["dAP"]["both"] == pytest.approx(0.25)


def test_missed_object_and_the_false_negative_oracle():
    r = tide_errors(TWO, [FOUND_2])
    only(r, "miss")
    assert r["AP50"] == pytest.approx(0.5) and r["num_fn"] == 1 and r["num_fp"] == 0
    # fixing the miss removes that object: class a is left with nothing and drops out of the mean.
    assert r["dAP"]["miss"] == pytest.approx(0.5) and r["special_dAP"]["FN"] == pytest.approx(0.5)


def test_a_detection_on_a_crowd_region_is_no_error():
    gt = ground_truth((1, 1, BOX), crowd=[(2, 1, [0.0, 0.0, 50.0, 50.0])])
    r = tide_errors(gt, [det(1, 1, BOX, 0.9), det(2, 1, [5.0, 5.0, 10.0, 10.0], 0.95)])
    only(r, None, 0)
    assert r["AP50"] == pytest.approx(1.0)


def test_agrees_with_tidecv_on_real_coco_boxes(shared_data, tmp_path):
    tidecv = pytest.importorskip("tidecv")
    from generated_detections import generated_detections

    gt_file = shared_data / "coco_mini" / "annotations.json"
    dets = generated_detections(json.loads(gt_file.read_text()))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    ours = tide_errors(load_coco_gt(gt_file), dets)
    tide = tidecv.TIDE()
    run = tide.evaluate(tidecv.datasets.COCO(str(gt_file)), tidecv.datasets.COCOResult(str(tmp_path / "dets.json")))
    theirs = tide.get_all_errors()
    main, special = theirs["main"]["dets"], theirs["special"]["dets"]
    names = {"cls": "Cls", "loc": "Loc", "both": "Both", "dupe": "Dupe", "bkg": "Bkg", "miss": "Miss"}
    assert ours["AP50"] * 100 == pytest.approx(run.ap, abs=1e-9)
    assert all(ours["counts"][k] > 50 for k in ERROR_TYPES)  # every type is exercised
    for kind, name in names.items():
        assert ours["dAP"][kind] * 100 == pytest.approx(main[name], abs=1e-9), kind
        assert ours["counts"][kind] == sum(e.short_name == name for e in run.errors), kind
    assert ours["special_dAP"]["FP"] * 100 == pytest.approx(special["FalsePos"], abs=1e-9)
    assert ours["special_dAP"]["FN"] * 100 == pytest.approx(special["FalseNeg"], abs=1e-9)
