"""The data doctor (tools/check_data.py) on deliberately broken data sets: every flaw is reported
with its count; the report files and plots are written; browse_data.py draws what the loader gives."""

import importlib.util
import json
import os
import shutil

import cv2
from data_fixtures import detection_cfg, make_coco, make_yolo, write_image

from resnet_det.data.catalog import register_from_config
from resnet_det.data.doctor import best_anchor_iou, diagnose
from resnet_det.utils.visualization import class_color

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small anchors and training sizes, so that a 32-pixel image is trained at its own size.
SMALL = [
    "input.min_size_train=[32]",
    "input.max_size_train=64",
    "model.anchors.sizes=[[8,16,32]]",
    "model.anchors.aspect_ratios=[1.0]",
]


def tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def broken_coco(root):
    """A COCO set with one of each flaw (see the counts in the test)."""
    cats = [(1, "background"), (2, "Car"), (3, "car "), (4, "truck"), (5, "bus")]
    images = [(i, f"{n}.png", 32, 32) for i, n in enumerate("abcdef", start=1)]
    anns = [
        (1, 2, [2, 2, 8, 8]),  # a: fine
        (1, 2, [0, 0, 40, 40]),  # a: outside (clipped)
        (1, 2, [5, 5, 0, 4]),  # a: no area
        (1, 99, [1, 1, 4, 4]),  # a: category not in the list
        (2, 3, [1, 1, 4, 4]),  # b (a copy of a's bytes): 4x4, no 8+ anchor covers it
        (3, 5, [1, 1, 2, 2]),  # c (really 20x30): 2x2, uncovered
        (5, 2, [1, 1, 8, 8]),  # e: its image is missing
        (6, 2, [1, 1, 8, 8]),  # f: undecodable
    ]  # d: no box
    data = {
        "images": [{"id": i, "file_name": f, "height": h, "width": w} for i, f, h, w in images],
        "annotations": [{"id": k, "image_id": i, "category_id": c, "bbox": b} for k, (i, c, b) in enumerate(anns, 1)],
        "categories": [{"id": i, "name": n} for i, n in cats],
    }
    json_path, images_dir = make_coco(root, data)
    shutil.copy(images_dir / "a.png", images_dir / "b.png")
    write_image(images_dir / "c.png", 30, 20)
    (images_dir / "e.png").unlink()
    (images_dir / "f.png").write_bytes(b"\x00not an image")
    return json_path, images_dir


def _counts(report):
    return {c["name"]: c["count"] for c in report["checks"]}


def test_every_flaw_of_a_broken_coco_set_is_counted(tmp_path):
    json_path, images = broken_coco(tmp_path)
    cfg = detection_cfg(
        f"datasets.custom.bad.annotations={json_path}",
        f"datasets.custom.bad.images={images}",
        "model.num_classes=6",
        *SMALL,
    )
    register_from_config(cfg.datasets)
    report, _ = diagnose("bad", cfg, rare=3)
    assert _counts(report) == {
        "empty_images": 1,  # d
        "duplicate_images": 1,  # b = a
        "boxes_outside": 1,
        "degenerate_boxes": 1,
        "missing_images": 1,  # e
        "corrupt_images": 1,  # f
        "size_mismatch": 1,  # c
        "labels_beyond_class_list": 1,  # category 99
        "absent_classes": 2,  # background, truck
        "rare_classes": 2,  # car (1), bus (1) below 3; Car has 3
        "similar_class_names": 1,  # Car / car
        "background_off_by_one": 2,  # a class named background; num_classes = 5 + 1
        "num_classes_mismatch": 1,
        "boxes_no_anchor_covers": 2,  # b's 4x4, c's 2x2
    }
    assert report["num_images"] == 5 and report["num_objects"] == 5
    assert report["anchors"]["share_of_boxes_no_anchor_covers"] == 0.4
    assert [c["boxes"] for c in report["classes"]] == [0, 3, 1, 0, 1]


def test_one_based_yolo_ids_are_the_background_off_by_one(tmp_path):
    data = make_yolo(
        tmp_path / "y", {"train/a.png": ((32, 32), "1 0.5 0.5 0.5 0.5\n2 0.5 0.5 0.25 0.25\n")}, names=["a", "b"]
    )
    cfg = detection_cfg(
        "datasets.custom.y.format=yolo", f"datasets.custom.y.classes={data}", "datasets.custom.y.split=train", *SMALL
    )
    register_from_config(cfg.datasets)
    report, _ = diagnose("y", cfg)
    counts = _counts(report)
    assert counts["background_off_by_one"] == 1 and counts["labels_beyond_class_list"] == 1
    assert "ids look 1-based" in next(c["message"] for c in report["checks"] if c["name"] == "background_off_by_one")
    assert counts["absent_classes"] == 1 and "empty_images" not in counts


def test_anchor_iou_is_the_centred_overlap():
    import numpy as np

    iou = best_anchor_iou(np.array([[8.0, 8.0], [4.0, 4.0], [16.0, 4.0]]), np.array([[8.0, 8.0], [16.0, 16.0]]))
    np.testing.assert_allclose(iou, [1.0, 0.25, 32 / (64 + 64 - 32)])


def test_check_data_tool_writes_the_report_and_plots(tmp_path, capsys):
    json_path, images = broken_coco(tmp_path / "data")
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"datasets:\n  custom:\n    bad: {{images: {images}, annotations: {json_path}}}\n  train: [bad]\n  test: []\n"
    )
    tool("check_data").main([str(config), "--output", str(tmp_path / "out"), *SMALL])
    out = capsys.readouterr().out
    assert "# Data report: bad (coco)" in out and "`duplicate_images`: 1" in out
    folder = tmp_path / "out" / "bad"
    report = json.loads((folder / "data_report.json").read_text())
    assert _counts(report)["size_mismatch"] == 1 and report["bad_records"]["counts"]["bad_boxes skipped"] == 1
    assert (folder / "data_report.md").read_text().startswith("# Data report: bad")
    for png in ("class_counts.png", "objects_per_image.png", "box_shapes.png"):
        assert cv2.imread(str(folder / png)) is not None, png


def test_browse_data_draws_what_the_loader_delivers(tmp_path):
    data = make_yolo(tmp_path / "y")
    folder = tmp_path / "drawn"
    args = ["y_train", "-n", "3", "--output", str(folder), "datasets.custom.y_train.format=yolo"]
    args += [f"datasets.custom.y_train.classes={data}", "datasets.custom.y_train.split=train"]
    args += ["input.min_size_train=[96]", "input.max_size_train=128", "input.hflip_prob=1.0"]
    tool("browse_data").main(args)
    files = sorted(os.listdir(folder))
    assert len(files) == 3
    image = cv2.imread(str(folder / files[0]))
    # Only a.png has boxes (training leaves empty images out); at min size 96 it is 128x96.
    assert image.shape[:2] == (96, 128)
    # Its washer box [0, 0, 16, 24] is [0, 0, 32, 48] resized, [96, 0, 128, 48] flipped: the box's
    # left edge is drawn at x = 96 in the washer's colour.
    assert tuple(int(v) for v in image[40, 96][::-1]) == class_color(3)
    assert tuple(int(v) for v in image[40, 31][::-1]) != class_color(3)
