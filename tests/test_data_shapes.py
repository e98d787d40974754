"""The generated shapes datasets: content, determinism, and atomic, process-safe generation."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from resnet_det.data import ensure_shapes_classification, ensure_shapes_detection, get_dataset, read_image, shapes
from resnet_det.errors import DatasetError


def _digest(folder: Path) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    return root, ensure_shapes_detection(root), ensure_shapes_classification(root)


def test_detection_set_is_coco_format_with_reasonable_objects(generated):
    root, folder, _ = generated
    assert folder == root / "shapes"
    for split, count in shapes.DETECTION_IMAGES.items():
        records, meta = get_dataset(f"shapes_{split}", root=root)
        assert len(records) == count == len(list((folder / split).glob("*.png")))
        assert meta["class_names"] == list(shapes.CLASS_NAMES) and meta["evaluator"] == "coco"
        assert meta["sanitize_counts"].total() == 0
        boxes = np.array([a["bbox"] for r in records for a in r["annotations"]])
        sides = boxes[:, 2:] - boxes[:, :2]
        assert sides.min() >= shapes.MIN_VISIBLE_SIDE and sides.max() <= shapes.OBJECT_SIZE_RANGE[1] + 1
        assert all(1 <= len(r["annotations"]) <= shapes.MAX_OBJECTS for r in records)
        labels = [a["label"] for r in records for a in r["annotations"]]
        assert set(labels) == {1, 2, 3} and min(np.bincount(labels)[1:]) > 0.25 * len(labels)
        sizes = {(r["height"], r["width"]) for r in records}
        assert all(128 <= h <= 256 and 128 <= w <= 256 for h, w in sizes) and len(sizes) > count // 2
    # Some objects are clipped by the border, and the image files match their records.
    train, _ = get_dataset("shapes_train", root=root)
    at_border = [a for r in train for a in r["annotations"] if min(a["bbox"][:2]) == 0 or a["bbox"][2] == r["width"]]
    assert len(at_border) > 20
    assert read_image(train[0]["file_name"]).shape == (train[0]["height"], train[0]["width"], 3)


def test_boxes_are_tight_around_the_painted_shapes():
    rng = np.random.default_rng(0)
    for label in (1, 2, 3):
        for _ in range(30):
            polygon = shapes._shape_polygon(rng, label, *rng.uniform(60, 140, 2), rng.uniform(24, 96))
            canvas = np.zeros((200, 200, 3), np.uint8)
            shapes._fill(canvas, polygon, (255, 255, 255))
            ys, xs = np.nonzero(canvas[..., 0] > 127)
            painted = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert np.abs(np.array(shapes._polygon_box(polygon)) - painted).max() < 0.7


def test_classification_set_is_an_image_folder(generated):
    _, _, folder = generated
    for split, per_class in shapes.CLASSIFICATION_IMAGES_PER_CLASS.items():
        assert sorted(p.name for p in (folder / split).iterdir()) == sorted(shapes.CLASS_NAMES)
        for name in shapes.CLASS_NAMES:
            files = sorted((folder / split / name).glob("*.png"))
            assert len(files) == per_class
        assert read_image(files[0]).shape == (shapes.CLASSIFICATION_SIZE, shapes.CLASSIFICATION_SIZE, 3)


def test_generation_is_deterministic_and_a_second_call_is_a_no_op(generated, tmp_path):
    root, folder, cls_folder = generated
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    assert ensure_shapes_detection(root) == folder
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before
    assert _digest(ensure_shapes_detection(tmp_path)) == _digest(folder)
    assert _digest(ensure_shapes_classification(tmp_path)) == _digest(cls_folder)
    first = json.loads((folder / "annotations" / "instances_train.json").read_text())
    assert first["categories"][0] == {"id": 1, "name": "circle", "supercategory": "shape"}


def test_a_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    def crash(out):
        (out / "train").mkdir()
        (out / "train" / "000001.png").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(shapes, "_write_detection", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_shapes_detection(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_root_is_a_dataset_error(tmp_path):
    (tmp_path / "not_a_folder").write_text("")
    with pytest.raises(DatasetError, match=r"cannot generate .*not_a_folder/shapes .*; make the data root writable"):
        ensure_shapes_detection(tmp_path / "not_a_folder")


def test_a_generation_that_loses_the_race_keeps_the_winners_copy(tmp_path, monkeypatch):
    # Two processes generate at once (torchrun); the other one renames its copy into place while
    # this one is still writing: this one's rename fails, and it uses and keeps the winner's copy.
    def write(out, who="loser"):
        (out / "who").write_text(who)
        if who == "loser":
            monkeypatch.setattr(shapes, "_write_detection", lambda o: write(o, "winner"))
            ensure_shapes_detection(tmp_path)

    monkeypatch.setattr(shapes, "_write_detection", write)
    assert ensure_shapes_detection(tmp_path) == tmp_path / "shapes"
    assert (tmp_path / "shapes" / "who").read_text() == "winner"
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]  # the loser's temporary copy is gone
