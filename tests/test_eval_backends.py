"""--backend faster-coco-eval gives pycocotools' numbers: the 12 to 1e-6, per class and the PR data."""

import json

import numpy as np
import pytest

from resnet_det.errors import EvaluationError
from resnet_det.evaluation.coco import coco_gt_from_records, evaluate_coco, load_coco_gt
from resnet_det.evaluation.evaluator import evaluate_detections, evaluate_with_coco_file

pytest.importorskip("faster_coco_eval")


def assert_same(reference, faster):
    assert list(reference["summary"]) == list(faster["summary"]) and len(reference["summary"]) == 12
    for name, value in reference["summary"].items():
        assert faster["summary"][name] == pytest.approx(value, abs=1e-6), name
    assert reference["cocoeval_summary"] == faster["cocoeval_summary"]
    for a, b in zip(reference["per_class"], faster["per_class"], strict=True):
        assert a["name"] == b["name"] and a["num_gt"] == b["num_gt"]
        for key in ("AP", "AP50"):
            assert (a[key] is None) == (b[key] is None) and (
                a[key] is None or b[key] == pytest.approx(a[key], abs=1e-6)
            )
    for name, curve in reference["pr_curves"]["precision"].items():
        np.testing.assert_allclose(faster["pr_curves"]["precision"][name], curve, atol=1e-6)


def test_real_coco_boxes_with_generated_detections(shared_data):
    from generated_detections import generated_detections

    gt_file = shared_data / "coco_mini" / "annotations.json"
    gt = load_coco_gt(gt_file)
    for seed in (0, 1):
        dets = generated_detections(json.loads(gt_file.read_text()), seed=seed)
        reference = evaluate_coco(gt, dets)
        assert 0.1 < reference["summary"]["AP"] < 0.9  # a real spread of hits and errors
        assert_same(reference, evaluate_coco(gt, dets, backend="faster-coco-eval"))
    half = sorted(gt.getImgIds())[::2]
    assert_same(
        evaluate_coco(gt, dets, img_ids=half), evaluate_coco(gt, dets, img_ids=half, backend="faster-coco-eval")
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_suites_coco_cases(tmp_path, seed):
    from test_eval_coco import make_case

    gt, dets = make_case(seed)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    reference = evaluate_with_coco_file(dets, tmp_path / "gt.json", "dets")
    faster = evaluate_with_coco_file(dets, tmp_path / "gt.json", "dets", backend="faster-coco-eval")
    assert reference["backend"] == "pycocotools" and faster["backend"] == "faster-coco-eval"
    assert_same(reference, faster)
    assert_same(
        evaluate_coco(load_coco_gt(tmp_path / "gt.json"), []),
        evaluate_coco(load_coco_gt(tmp_path / "gt.json"), [], backend="faster-coco-eval"),
    )


def test_the_suites_voc_case_difficult_objects_as_crowd():
    from test_eval_report import detections_of, voc_like

    records, metadata = voc_like()
    dets = [d for d in detections_of(records) if d["image_id"] != 2]
    dets.append({"image_id": 2, "category_id": 2, "bbox": [80.0, 80.0, 20.0, 20.0], "score": 0.95})
    reference = evaluate_detections(dets, records, metadata)
    faster = evaluate_detections(dets, records, metadata, backend="faster-coco-eval")
    assert faster["summary"]["mAP"] == reference["summary"]["mAP"]  # the VOC AP is ours, either way
    assert_same(
        evaluate_coco(coco_gt_from_records(records, metadata["class_names"], {1: 1, 2: 2, 3: 3}), dets),
        evaluate_coco(
            coco_gt_from_records(records, metadata["class_names"], {1: 1, 2: 2, 3: 3}), dets, backend="faster-coco-eval"
        ),
    )


def test_an_unknown_backend_is_refused():
    from test_eval_report import voc_like

    records, metadata = voc_like()
    with pytest.raises(
        EvaluationError, match="unknown COCO backend 'fast': choose one of pycocotools, faster-coco-eval"
    ):
        evaluate_detections([], records, metadata, backend="fast")
