"""COCO-style evaluation: agreement with pycocotools, per-category numbers, and bad inputs."""

import contextlib
import io
import json
import logging

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resnet_det.errors import EvaluationError
from resnet_det.evaluation.coco import (
    check_detections,
    coco_gt_from_records,
    evaluate_coco,
    load_coco_gt,
    load_detections,
)
from resnet_det.evaluation.evaluator import evaluate_with_coco_file

CATEGORIES = [{"id": i, "name": n} for i, n in [(1, "person"), (7, "train"), (90, "toothbrush"), (44, "bottle")]]


def make_case(seed=0):
    """A small COCO ground truth (non-contiguous ids, crowd boxes, all three area ranges, one
    category without boxes) and noisy detections of it: jittered hits, misses, stray boxes."""
    rng = np.random.RandomState(seed)
    images = [{"id": 100 + i, "width": 160, "height": 120, "file_name": f"{i}.jpg"} for i in range(6)]
    annotations, detections = [], []
    for image in images:
        for _ in range(rng.randint(1, 6)):
            w, h = rng.choice([12, 40, 110]) * rng.uniform(0.8, 1.2, size=2)
            x, y = rng.uniform(0, 160 - w), rng.uniform(0, 120 - h)
            cat = int(rng.choice([1, 7, 90]))
            crowd = int(rng.rand() < 0.1)
            box = [x, y, w, h]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image["id"], "category_id": cat, "bbox": box, "area": w * h,
                 "iscrowd": crowd}
            )  # fmt: skip
            if rng.rand() < 0.8:
                hit = np.add(box, rng.uniform(-0.15, 0.15, size=4) * [w, h, w, h]).tolist()
                detections.append({"image_id": image["id"], "category_id": cat, "bbox": hit, "score": rng.rand()})
        for _ in range(rng.randint(0, 3)):
            stray = rng.uniform(0, 60, size=4).tolist()
            cat = int(rng.choice([1, 7, 90, 44]))
            detections.append({"image_id": image["id"], "category_id": cat, "bbox": stray, "score": rng.rand()})
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}, detections


@pytest.fixture
def case(tmp_path):
    gt, dets = make_case()
    gt_path, dets_path = tmp_path / "instances.json", tmp_path / "dets.json"
    gt_path.write_text(json.dumps(gt))
    dets_path.write_text(json.dumps(dets))
    return gt_path, dets_path, gt, dets


def pycocotools_run(gt_path, dets_path, cat_ids=None):
    """What pycocotools alone says: its stats and its printed summary."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        coco_eval = COCOeval(gt, gt.loadRes(str(dets_path)), "bbox")
        if cat_ids is not None:
            coco_eval.params.catIds = cat_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        coco_eval.summarize()
    return coco_eval.stats, printed.getvalue().splitlines()


def test_numbers_and_printed_summary_are_pycocotools_own(case):
    gt_path, dets_path, _, _ = case
    stats, printed = pycocotools_run(gt_path, dets_path)
    report = evaluate_with_coco_file(load_detections(dets_path), gt_path, source=str(dets_path))
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    assert list(report["summary"]) == names
    assert list(report["summary"].values()) == stats.tolist()
    assert report["cocoeval_summary"] == printed
    assert 0 < report["summary"]["AP"] < 1  # a case with both hits and misses
    assert report["num_images"] == 6 and report["num_detections"] == len(load_detections(dets_path))


def test_per_category_ap_is_pycocotools_on_that_category_alone(case):
    gt_path, dets_path, gt, dets = case
    parts = evaluate_coco(load_coco_gt(gt_path), dets)
    rows = {row["category_id"]: row for row in parts["per_class"]}
    assert [row["name"] for row in parts["per_class"]] == ["person", "train", "bottle", "toothbrush"]  # by id
    for cat_id in (1, 7, 90):
        stats, _ = pycocotools_run(gt_path, dets_path, cat_ids=[cat_id])
        assert rows[cat_id]["AP"] == pytest.approx(stats[0], abs=1e-12)
        assert rows[cat_id]["AP50"] == pytest.approx(stats[1], abs=1e-12)
        non_crowd = [a for a in gt["annotations"] if a["category_id"] == cat_id and not a["iscrowd"]]
        assert rows[cat_id]["num_gt"] == len(non_crowd)
    assert rows[44] == {"name": "bottle", "category_id": 44, "AP": None, "AP50": None, "num_gt": 0}
    assert set(parts["pr_curves"]["precision"]) == {"person", "train", "toothbrush"}
    assert len(parts["pr_curves"]["recall"]) == len(parts["pr_curves"]["precision"]["person"]) == 101


def test_empty_results_warn_and_score_zero(case, caplog):
    gt_path, _, _, _ = case
    with caplog.at_level(logging.WARNING, logger="resnet_det.evaluation.coco"):
        report = evaluate_with_coco_file([], gt_path, source="empty.json")
    assert "no detections in empty.json: every AP is 0" in caplog.text
    assert report["summary"]["AP"] == 0.0 and report["summary"]["AR100"] == 0.0
    assert all(row["AP"] in (0.0, None) for row in report["per_class"])


def bird_ground_truth(second_is_difficult):
    """One image, two birds, as records turned into a COCO ground truth (label 1 -> id 16)."""
    boxes = [([10.0, 10.0, 50.0, 60.0], 0), ([60.0, 5.0, 95.0, 40.0], int(second_is_difficult))]
    anns = [{"bbox": box, "label": 1, "iscrowd": 0, "difficult": difficult} for box, difficult in boxes]
    records = [{"image_id": 5, "height": 100, "width": 100, "file_name": "5.jpg", "annotations": anns}]
    return coco_gt_from_records(records, ["bird"], {1: 16})


def test_records_as_coco_ground_truth_ignore_difficult_objects():
    gt = bird_ground_truth(second_is_difficult=True)
    assert [a["bbox"] for a in gt.loadAnns(gt.getAnnIds())] == [[10.0, 10.0, 40.0, 50.0], [60.0, 5.0, 35.0, 35.0]]
    assert [a["iscrowd"] for a in gt.loadAnns(gt.getAnnIds())] == [0, 1]
    hit = {"image_id": 5, "category_id": 16, "bbox": [10.0, 10.0, 40.0, 50.0], "score": 0.9}
    on_second = {"image_id": 5, "category_id": 16, "bbox": [60.0, 5.0, 35.0, 35.0], "score": 0.95}
    assert evaluate_coco(gt, [hit])["summary"]["AP"] == pytest.approx(1.0)  # the difficult one is no miss
    assert evaluate_coco(gt, [on_second, hit])["summary"]["AP"] == pytest.approx(1.0)  # nor a false positive
    plain = bird_ground_truth(second_is_difficult=False)
    assert evaluate_coco(plain, [hit])["summary"]["AP"] < 0.6  # a plain object missed


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


ANN = {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5]}
GOOD = {"images": [{"id": 1}], "categories": [{"id": 3, "name": "car"}], "annotations": [ANN]}


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"images": [', "line 1 column 13: malformed JSON"),
        ({"images": [], "categories": []}, "not a COCO instances file"),
        ({**GOOD, "annotations": []}, "has no annotations"),
        ({**GOOD, "annotations": [{k: v for k, v in ANN.items() if k != "bbox"}]}, "annotation #0 lacks 'bbox'"),
        ({**GOOD, "categories": [{"id": 3}]}, "category #0 lacks 'name'"),
        ({**GOOD, "annotations": [{**ANN, "bbox": [0, 0, -5, 5]}]}, "annotation #0 has bbox [0, 0, -5, 5]"),
    ],
    ids=["malformed-json", "not-instances", "no-annotations", "no-bbox", "no-category-name", "negative-width"],
)
def test_bad_ground_truth_files_are_one_line_errors(tmp_path, content, expected):
    path = write(tmp_path, "gt.json", content)
    with pytest.raises(EvaluationError) as info:
        load_coco_gt(path)
    message = str(info.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_a_ground_truth_without_area_or_iscrowd_gets_coco_defaults(tmp_path):
    ann = load_coco_gt(write(tmp_path, "gt.json", GOOD)).loadAnns([1])[0]
    assert ann["area"] == 25 and ann["iscrowd"] == 0


def test_a_missing_file_names_itself(tmp_path):
    with pytest.raises(EvaluationError, match=r"results file .*nope\.json does not exist"):
        load_detections(tmp_path / "nope.json")


DET = {"image_id": 1, "category_id": 3, "bbox": [0.0, 0.0, 4.0, 4.0], "score": 0.5}


@pytest.mark.parametrize(
    "detections, expected",
    [
        ([{**DET, "category_id": 2}], "detection #0 has category_id 2, not one of the ground truth's 1 category ids"),
        ([DET, {**DET, "image_id": 9}], "detection #1 has image_id 9, which is not an image of the ground truth"),
        ([{k: v for k, v in DET.items() if k != "score"}], "detection #0 lacks 'score'"),
        ([{**DET, "bbox": [0, 0, 4]}], "detection #0 has bbox [0, 0, 4]"),
        ([{**DET, "score": "high"}], "detection #0 has score 'high'"),
        ([[1, 0, 0, 4, 4, 0.5]], "detection #0 is list, not an object"),
    ],
    ids=["unknown-category", "unknown-image", "no-score", "short-bbox", "text-score", "not-an-object"],
)
def test_bad_detections_are_one_line_errors(detections, expected):
    with pytest.raises(EvaluationError) as info:
        check_detections(detections, {1}, {3}, "dets.json")
    message = str(info.value)
    assert message.startswith("dets.json: ") and expected in message and "\n" not in message


def test_a_results_file_that_is_not_a_list_is_refused(tmp_path):
    with pytest.raises(EvaluationError, match="a results file is a JSON list of detections .* got dict"):
        load_detections(write(tmp_path, "dets.json", {"annotations": []}))
