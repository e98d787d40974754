"""The evaluator's dispatch and report dict; report.json, report.md, the PR plot; --compare."""

import json

import pytest

from resnet_det.errors import EvaluationError
from resnet_det.evaluation.evaluator import default_metric, evaluate_detections
from resnet_det.evaluation.plots import classes_to_plot
from resnet_det.evaluation.report import compare_reports, format_markdown, format_table, load_report, write_report

CLASS_NAMES = ["aeroplane", "bicycle", "bird"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def voc_like(year="2007"):
    """Three images of a VOC-style dataset; the third aeroplane is difficult, no bird at all."""
    objects = {
        1: [(1, [10, 10, 60, 50], 0), (2, [70, 20, 110, 90], 0)],
        2: [(1, [5, 5, 40, 40], 0)],
        3: [(1, [20, 30, 90, 80], 1)],
    }
    records = [
        {
            "file_name": f"/voc/{image_id}.jpg", "image_id": image_id, "height": 120, "width": 120,
            "annotations": [
                {"bbox": [float(v) for v in box], "label": label, "iscrowd": 0, "difficult": difficult}
                for label, box, difficult in objs
            ],
        }
        for image_id, objs in objects.items()
    ]  # fmt: skip
    metadata = {
        "name": f"toy_voc_{year}", "class_names": CLASS_NAMES, "label_to_category_id": {1: 1, 2: 2, 3: 3},
        "evaluator": "voc", "year": year,
    }  # fmt: skip
    return records, metadata


def detections_of(records, score=0.9):
    """A detection on every object (difficult ones too), category id = label."""
    return [
        {"image_id": r["image_id"], "category_id": a["label"], "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}
        for r in records
        for a in r["annotations"]
        for x0, y0, x1, y1 in [a["bbox"]]
    ]


def test_the_metric_defaults_by_dataset():
    assert default_metric({"evaluator": "coco"}) == "coco"
    assert default_metric({"evaluator": "voc", "year": "2007"}) == "voc07"
    assert default_metric({"evaluator": "voc", "year": 2012}) == "voc10"


def test_a_voc_report_holds_map_the_coco_numbers_and_the_classes():
    records, metadata = voc_like()
    # One aeroplane found, one missed, plus a stray bicycle box: aeroplane AP 1/2, bicycle AP 1/2.
    dets = [d for d in detections_of(records) if d["image_id"] != 2]
    dets.append({"image_id": 2, "category_id": 2, "bbox": [80.0, 80.0, 20.0, 20.0], "score": 0.95})
    report = evaluate_detections(dets, records, metadata)
    assert report["metric"] == "voc07" and report["dataset"] == "toy_voc_2007"
    assert report["num_images"] == 3 and report["num_detections"] == len(dets)
    assert report["checkpoint"] is None and report["config_hash"] is None and report["date"]
    assert list(report["summary"])[:2] == ["mAP", "AP"] and "ARl" in report["summary"]
    rows = {row["name"]: row for row in report["per_class"]}
    # aeroplane: TP (image 1), the difficult one in image 3 is detected but ignored, image 2 missed:
    # recall 1/2 at precision 1 -> 11-point AP 6/11 (levels 0..0.5).
    assert rows["aeroplane"]["AP"] == pytest.approx(6 / 11) and rows["aeroplane"]["num_gt"] == 2
    # bicycle: the stray box scores higher than the hit: precision 1/2 at recall 1 -> AP 1/2.
    assert rows["bicycle"]["AP"] == pytest.approx(0.5)
    assert rows["bird"]["AP"] is None
    assert report["summary"]["mAP"] == pytest.approx((6 / 11 + 0.5) / 2)
    assert len(report["cocoeval_summary"]) == 12


def test_the_metric_can_be_chosen_and_must_exist():
    records, metadata = voc_like(year="2007")
    dets = [d for d in detections_of(records) if d["image_id"] != 2]
    area = evaluate_detections(dets, records, metadata, metric="voc10")
    assert area["metric"] == "voc10"
    assert area["per_class"][0]["AP"] == pytest.approx(0.5)  # area under precision 1 up to recall 1/2
    coco = evaluate_detections(dets, records, metadata, metric="coco")
    assert "mAP" not in coco["summary"] and coco["per_class"][0]["AP50"] == pytest.approx(0.5, abs=0.01)
    with pytest.raises(EvaluationError, match="unknown metric 'voc12': choose one of coco, voc07, voc10"):
        evaluate_detections(dets, records, metadata, metric="voc12")


def test_a_dataset_without_objects_cannot_be_evaluated():
    records, metadata = voc_like()
    for rec in records:
        rec["annotations"] = []
    with pytest.raises(EvaluationError, match="dataset toy_voc_2007 has no annotated objects"):
        evaluate_detections([], records, metadata)


def test_write_report_leaves_every_file(tmp_path):
    records, metadata = voc_like()
    dets = detections_of(records)
    report = evaluate_detections(dets, records, metadata)
    report.update(checkpoint="model_final.pth", config_hash="abc123")
    paths = write_report(report, dets, tmp_path / "eval")
    written = sorted(p.name for p in (tmp_path / "eval").iterdir())
    assert written == ["detections.json", "pr_curves.png", "report.json", "report.md"]
    stored = json.loads(paths["report.json"].read_text())
    assert stored == {k: v for k, v in report.items() if k != "pr_curves"}
    assert stored["summary"]["mAP"] == 1.0 and stored["checkpoint"] == "model_final.pth"
    assert json.loads(paths["detections.json"].read_text()) == dets
    assert paths["pr_curves.png"].read_bytes().startswith(PNG_SIGNATURE)
    markdown = paths["report.md"].read_text()
    assert "| aeroplane | 1.000 | 2 |" in markdown and "config hash: abc123" in markdown
    assert " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in markdown


def test_tables_show_three_decimals_and_dashes_for_no_number():
    records, metadata = voc_like()
    report = evaluate_detections(detections_of(records), records, metadata)
    table = format_table(report)
    assert table.startswith("PASCAL VOC2007 11-point AP at IoU 0.5 on toy_voc_2007: 3 images, 4 detections")
    assert "mean       1.000" in table
    assert [line.split() for line in table.splitlines() if line.startswith("bird")] == [["bird", "-", "0"]]
    assert "APs" in table and "-" in format_markdown(report)


def test_the_plot_keeps_the_best_and_worst_classes_when_there_are_many():
    ap = {f"c{i}": i / 20 for i in range(12)}
    assert classes_to_plot(ap, max_lines=10) == ["c11", "c10", "c9", "c8", "c7", "c4", "c3", "c2", "c1", "c0"]
    assert classes_to_plot({"a": 0.2, "b": 0.9}, max_lines=10) == ["b", "a"]


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def test_compare_prints_the_difference_of_every_number_and_class(tmp_path):
    base = {"metric": "coco", "dataset": "shapes_val", "checkpoint": "a.pth", "date": "2025-01-01"}
    a = write_json(tmp_path / "a.json", {
        **base, "summary": {"AP": 0.25, "AP50": 0.5, "APs": -1.0},
        "per_class": [{"name": "circle", "AP": 0.2}, {"name": "square", "AP": 0.3}],
    })  # fmt: skip
    b = write_json(tmp_path / "b.json", {
        **base, "checkpoint": "b.pth", "summary": {"AP": 0.375, "AP50": 0.5, "APs": -1.0},
        "per_class": [{"name": "circle", "AP": 0.1}, {"name": "triangle", "AP": 0.4}],
    })  # fmt: skip
    lines = [line.split() for line in compare_reports(a, b).splitlines()]
    assert lines[0][:3] == ["a", "=", f"{a}:"] and "a.pth," in lines[0]
    assert ["AP", "0.250", "0.375", "+0.125"] in lines
    assert ["AP50", "0.500", "0.500", "+0.000"] in lines
    assert ["APs", "-", "-", "-"] in lines
    assert ["circle", "0.200", "0.100", "-0.100"] in lines
    assert ["square", "0.300", "-", "-"] in lines and ["triangle", "-", "0.400", "-"] in lines


def test_compare_refuses_what_is_not_a_report(tmp_path):
    path = write_json(tmp_path / "dets.json", [{"image_id": 1}])
    with pytest.raises(EvaluationError, match=r"dets\.json: not a report\.json of tools/eval\.py"):
        load_report(path)


def test_compare_notes_reports_of_different_things(tmp_path):
    base = {"metric": "voc07", "dataset": "voc_2007_test", "summary": {"mAP": 0.7}, "per_class": []}
    a = write_json(tmp_path / "a.json", base)
    b = write_json(tmp_path / "b.json", {**base, "metric": "voc10", "summary": {"mAP": 0.72}})
    text = compare_reports(a, b)
    assert "note: the metrics differ (voc07 vs voc10)" in text and "datasets differ" not in text
    assert ["mAP", "0.700", "0.720", "+0.020"] in [line.split() for line in text.splitlines()]
