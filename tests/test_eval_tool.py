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
        ("[{]", "malformed JSON"),
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
        (["--gt", "g.json"], "give exactly one of --results, --run, --config (with --weights), --model or --compare"),
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


# --- VOC: the devkit's own image ids and its per-class result files ------------------------------------


def xml_boxes(voc_root: Path, voc_id: str):
    """``[(class, xmin, ymin, xmax, ymax)]`` of an annotation, as the XML writes them (1-based pixels)."""
    import xml.etree.ElementTree as ET

    root = ET.parse(voc_root / "Annotations" / f"{voc_id}.xml").getroot()
    return [
        (obj.findtext("name"), *(float(obj.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")))
        for obj in root.findall("object")
    ]


def test_real_voc_devkit_ids_and_per_class_files_round_trip(eval_tool, shared_data, tmp_path, capsys):
    from resnet_det.data.catalog import get_dataset

    root = shared_data / "voc_mini"
    records, _ = get_dataset("voc_2012_trainval", root=root)
    voc_ids = [r["voc_id"] for r in records]
    assert voc_ids[0] == "2007_000027"
    by_devkit_id = [
        {"image_id": r["voc_id"], "category_id": a["label"], "bbox": [x0, y0, x1 - x0, y1 - y0], "score": 0.8}
        for r in records
        for a in r["annotations"]
        for x0, y0, x1, y1 in [a["bbox"]]
    ]
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(by_devkit_id))
    out = tmp_path / "out"
    args = ["--results", dets, "--dataset", "voc_2012_trainval", "--data-root", root, "--output", out]
    eval_tool.main([str(a) for a in args])
    first = json.loads((out / "report.json").read_text())
    assert first["summary"]["mAP"] == 1.0 and first["num_detections"] == len(by_devkit_id)

    folder = out / "results" / "VOC2012" / "Main"
    assert len(list(folder.glob("comp4_det_test_*.txt"))) == 20  # every class, as the devkit expects
    voc_root = root / "VOCdevkit" / "VOC2012"
    written = {line for f in folder.glob("*.txt") for line in f.read_text().splitlines()}
    expected = {
        f"{voc_id} 0.800000 {x0:.3f} {y0:.3f} {x1:.3f} {y1:.3f}"
        for voc_id in voc_ids
        for name, x0, y0, x1, y1 in xml_boxes(voc_root, voc_id)
    }
    assert written == expected  # the XML's own 1-based coordinates, under the devkit ids
    person = (folder / "comp4_det_test_person.txt").read_text().splitlines()
    assert all(line.split()[0] in voc_ids for line in person) and len(person) == sum(
        name == "person" for voc_id in voc_ids for name, *_ in xml_boxes(voc_root, voc_id)
    )

    capsys.readouterr()
    again = tmp_path / "again"
    args = ["--results", folder, "--dataset", "voc_2012_trainval", "--data-root", root, "--output", again]
    eval_tool.main([str(a) for a in args])
    second = json.loads((again / "report.json").read_text())
    assert second["summary"] == first["summary"] and second["per_class"] == first["per_class"]


@pytest.fixture
def tiny_voc(tmp_path):
    from data_fixtures import make_voc

    make_voc(tmp_path, "2007", "test", {
        "000001": {"size": (40, 30), "objects": [{"name": "person", "box": (1, 1, 4, 4)}]},
        "000002": {"size": (40, 30), "objects": [{"name": "dog", "box": (11, 6, 30, 25)}]},
    })  # fmt: skip
    return tmp_path


def test_voc_result_files_are_read_with_one_based_pixels(eval_tool, tiny_voc, tmp_path, capsys):
    from resnet_det.data.catalog import get_dataset
    from resnet_det.evaluation.voc_results import read_voc_results

    files = tmp_path / "mine"
    files.mkdir()
    (files / "comp4_det_test_person.txt").write_text("000001 0.9 1 1 4 4\n000002 0.4 5 5 9 9\n")
    (files / "comp4_det_test_dog.txt").write_text("000002 0.7 11.0 6.0 30.0 25.0\n\n")
    records, metadata = get_dataset("voc_2007_test", root=tiny_voc)
    detections = sorted(read_voc_results(files, records, metadata), key=lambda d: -d["score"])
    assert detections == [
        {"image_id": 1, "category_id": 15, "bbox": [0.0, 0.0, 4.0, 4.0], "score": 0.9},  # pixels 1..4: [0, 4)
        {"image_id": 2, "category_id": 12, "bbox": [10.0, 5.0, 20.0, 20.0], "score": 0.7},
        {"image_id": 2, "category_id": 15, "bbox": [4.0, 4.0, 5.0, 5.0], "score": 0.4},
    ]
    assert [(r["voc_id"], r["annotations"][0]["bbox"]) for r in records] == [
        ("000001", [0.0, 0.0, 4.0, 4.0]), ("000002", [10.0, 5.0, 30.0, 25.0])
    ]  # fmt: skip
    args = ["--results", files, "--dataset", "voc_2007_test", "--data-root", tiny_voc, "--output", tmp_path / "o"]
    eval_tool.main([str(a) for a in args])
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["metric"] == "voc07" and report["summary"]["mAP"] == 1.0
    assert (tmp_path / "o" / "results" / "VOC2007" / "Main" / "comp4_det_test_person.txt").read_text() == (
        "000001 0.900000 1.000 1.000 4.000 4.000\n000002 0.400000 5.000 5.000 9.000 9.000\n"
    )


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("comp4_det_test_person.txt", "000001 0.9 1 1 4\n", "comp4_det_test_person.txt:1: '000001 0.9 1 1 4' is not"),
        ("comp4_det_test_person.txt", "000009 0.9 1 1 4 4\n", "image id '000009' is not an image of the split"),
        ("comp4_det_test_human.txt", "000001 0.9 1 1 4 4\n", "'human' is not a class of voc_2007_test"),
        ("detections.txt", "", "no comp4_det_test_<class>.txt files"),
    ],
)
def test_bad_voc_result_files_are_one_line_errors(tiny_voc, tmp_path, name, text, message):
    files = tmp_path / "bad"
    files.mkdir()
    (files / name).write_text(text)
    proc = run_tool("--results", files, "--dataset", "voc_2007_test", "--data-root", tiny_voc)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
