"""tools/eval.py without a model: --results against a COCO file, its outputs, errors, --compare."""

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "eval.py"


def run_tool(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(TOOL), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def eval_tool():
    """tools/eval.py as a module, to call its main() in this process."""
    spec = importlib.util.spec_from_file_location("eval_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def case(tmp_path):
    """A COCO ground truth of 5 images (ids 1, 3, 7 as categories) and noisy detections of it."""
    rng = np.random.RandomState(3)
    categories = [{"id": 1, "name": "circle"}, {"id": 3, "name": "square"}, {"id": 7, "name": "triangle"}]
    images = [{"id": i, "width": 128, "height": 96} for i in range(1, 6)]
    annotations, detections = [], []
    for image in images:
        for _ in range(4):
            w, h = rng.uniform(8, 90, size=2)
            x, y = rng.uniform(0, 128 - w), rng.uniform(0, 96 - h)
            cat = int(rng.choice([1, 3, 7]))
            box = [x, y, w, h]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image["id"], "category_id": cat, "bbox": box, "area": w * h,
                 "iscrowd": 0}
            )  # fmt: skip
            hit = np.add(box, rng.uniform(-0.2, 0.2, size=4) * [w, h, w, h]).tolist()
            detections.append({"image_id": image["id"], "category_id": cat, "bbox": hit, "score": rng.rand()})
    gt_path, dets_path = tmp_path / "instances.json", tmp_path / "dets.json"
    gt_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    dets_path.write_text(json.dumps(detections))
    return gt_path, dets_path


def test_results_mode_prints_and_stores_exactly_what_pycocotools_says(case, tmp_path):
    gt_path, dets_path = case
    out = tmp_path / "out"
    result = run_tool("--results", dets_path, "--gt", gt_path, "--output", out)
    assert result.returncode == 0, result.stderr

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        coco_eval = COCOeval(gt, gt.loadRes(str(dets_path)), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        coco_eval.summarize()
    expected = printed.getvalue().splitlines()
    assert len(expected) == 12
    assert [line for line in result.stdout.splitlines() if line.startswith(" Average")] == expected

    report = json.loads((out / "report.json").read_text())
    assert list(report["summary"].values()) == coco_eval.stats.tolist()
    assert report["metric"] == "coco" and report["dataset"] == str(gt_path)
    assert json.loads((out / "detections.json").read_text()) == json.loads(dets_path.read_text())
    assert (out / "pr_curves.png").read_bytes().startswith(b"\x89PNG")
    assert "## Per class" in (out / "report.md").read_text()
    assert "circle" in result.stdout and f"wrote {out / 'detections.json'}" in result.stdout


def test_a_user_error_is_one_line_and_exit_status_2(case, tmp_path):
    gt_path, _ = case
    dets = tmp_path / "labels.json"
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.9}]))
    result = run_tool("--results", dets, "--gt", gt_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {dets}: detection #0 has category_id 2")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "results, expected",
    [
        ("[{]", "not valid JSON"),
        ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}]', "detection #0 lacks 'score'"),
        ('[{"image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1}]', "image_id 99, which is not"),
    ],
    ids=["malformed-json", "missing-field", "unknown-image"],
)
def test_bad_results_files_stop_with_one_line(eval_tool, case, tmp_path, capsys, results, expected):
    gt_path, _ = case
    dets = tmp_path / "dets.json"
    dets.write_text(results)
    with pytest.raises(SystemExit) as info:
        eval_tool.main(["--results", str(dets), "--gt", str(gt_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: ") and expected in err and err.count("\n") == 1


def test_a_ground_truth_without_annotations_stops(eval_tool, case, tmp_path, capsys):
    _, dets_path = case
    gt = tmp_path / "empty_gt.json"
    gt.write_text(json.dumps({"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1, "name": "circle"}]}))
    with pytest.raises(SystemExit) as info:
        eval_tool.main(["--results", str(dets_path), "--gt", str(gt)])
    assert info.value.code == 2
    expected = f"error: {gt} has no annotations: there is nothing to evaluate against; give a file with boxes\n"
    assert capsys.readouterr().err == expected


def test_an_empty_results_file_scores_zero(eval_tool, case, tmp_path, capsys):
    gt_path, _ = case
    dets = tmp_path / "none.json"
    dets.write_text("[]")
    eval_tool.main(["--results", str(dets), "--gt", str(gt_path), "--output", str(tmp_path / "out")])
    assert " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.000" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "report.json").read_text())["summary"]["AP"] == 0.0


def test_compare_two_runs(eval_tool, case, tmp_path, capsys):
    gt_path, dets_path = case
    worse = tmp_path / "worse.json"
    worse.write_text(json.dumps(json.loads(dets_path.read_text())[::2]))  # half the detections
    eval_tool.main(["--results", str(dets_path), "--gt", str(gt_path), "--output", str(tmp_path / "a")])
    eval_tool.main(["--results", str(worse), "--gt", str(gt_path), "--output", str(tmp_path / "b")])
    a, b = (json.loads((tmp_path / run / "report.json").read_text()) for run in "ab")
    capsys.readouterr()
    eval_tool.main(["--compare", str(tmp_path / "a" / "report.json"), str(tmp_path / "b" / "report.json")])
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines() if line.strip()}
    ar_a, ar_b = a["summary"]["AR100"], b["summary"]["AR100"]
    assert rows["AR100"] == [f"{ar_a:.3f}", f"{ar_b:.3f}", f"{ar_b - ar_a:+.3f}"]
    assert ar_b < ar_a
    assert set(rows) >= {"AP", "AP50", "ARl", "circle", "square", "triangle"}


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--results", "d.json"], "--results needs its ground truth: either --gt FILE or --dataset NAME"),
        (["--results", "d.json", "--gt", "g.json", "--metric", "voc07"], "--metric voc07 reads VOC records"),
        (["--gt", "g.json"], "give exactly one of --results, --run, --config (with --weights) or --compare"),
        (["--config", "c.yaml"], "--config and --weights go together"),
    ],
)
def test_flag_combinations_are_checked(eval_tool, capsys, argv, expected):
    with pytest.raises(SystemExit) as info:
        eval_tool.parse_args(argv)
    assert info.value.code == 2 and expected in capsys.readouterr().err


def test_results_on_a_registered_voc_split(eval_tool, shared_data, tmp_path, capsys):
    from resnet_det.data.catalog import get_dataset

    root = shared_data / "voc_mini"
    records, _ = get_dataset("voc_2012_trainval", root=root)
    perfect = [
        {"image_id": r["image_id"], "category_id": a["label"], "bbox": [x0, y0, x1 - x0, y1 - y0], "score": 0.8}
        for r in records
        for a in r["annotations"]
        for x0, y0, x1, y1 in [a["bbox"]]
    ]
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(perfect))
    out = tmp_path / "out"
    eval_tool.main(["--results", str(dets), "--dataset", "voc_2012_trainval", "--data-root", str(root),
                    "--output", str(out)])  # fmt: skip
    assert "PASCAL VOC2010+ area AP at IoU 0.5 on voc_2012_trainval" in capsys.readouterr().out  # 2012 -> voc10
    report = json.loads((out / "report.json").read_text())
    assert report["metric"] == "voc10" and report["summary"]["mAP"] == 1.0
    scored = {row["name"] for row in report["per_class"] if row["AP"] is not None}
    assert scored == {"aeroplane", "person", "train", "tvmonitor"}
