"""Own data in the three formats, registered from a config with no code: VOC-style XML with own
classes, YOLO txt (data.yaml or names file; splits by folder or list file), and COCO json."""

import json

import pytest
from data_fixtures import YOLO_NAMES, detection_cfg, make_coco, make_voc_style, make_yolo

from resnet_det.data.catalog import get_dataset, register_from_config
from resnet_det.data.sanitize import BadRecordPolicy, RecordSanitizer
from resnet_det.data.voc import VOC_CLASSES, load_voc_split
from resnet_det.errors import ConfigError, DatasetError


def _register(**entries):
    overrides = [f"datasets.custom.{name}.{key}={value}" for name, e in entries.items() for key, value in e.items()]
    cfg = detection_cfg(*overrides)
    register_from_config(cfg.datasets)
    return cfg


def _boxes(records):
    return {r["file_name"].rsplit("/", 1)[-1]: [(a["label"], a["bbox"]) for a in r["annotations"]] for r in records}


def test_voc_style_own_classes_from_the_xml(tmp_path, caplog):
    root = make_voc_style(tmp_path / "parts")
    _register(parts_all={"format": "voc", "root": root})
    with caplog.at_level("INFO"):
        records, meta = get_dataset("parts_all")
    assert meta["class_names"] == ["bolt", "nut"] and meta["evaluator"] == "voc"
    assert "2 classes from the XML (boxes): bolt (1), nut (2)" in caplog.text
    boxes = _boxes(records)
    # 1-based inclusive VOC pixels -> 0-based continuous; png images found by id.
    assert boxes == {
        "img_a.png": [(1, [10.0, 5.0, 30.0, 20.0]), (2, [0.0, 0.0, 60.0, 40.0])],
        "img_b.png": [(2, [5.0, 10.0, 35.0, 50.0])],
        "img_c.png": [],
    }
    assert [a["difficult"] for a in records[1]["annotations"]] == [1]  # kept for the VOC metric


def test_voc_style_classes_file_and_split(tmp_path):
    root = make_voc_style(tmp_path / "parts")
    (tmp_path / "classes.txt").write_text("nut\nbolt\nwasher\n")
    _register(parts_val={"format": "voc", "root": root, "split": "val", "classes": tmp_path / "classes.txt"})
    records, meta = get_dataset("parts_val")
    assert meta["class_names"] == ["nut", "bolt", "washer"]
    assert _boxes(records) == {"img_a.png": [(2, [10.0, 5.0, 30.0, 20.0]), (1, [0.0, 0.0, 60.0, 40.0])]}
    # Without a names file a split takes the classes of the whole folder, so every split has the same.
    (root / "ImageSets" / "Main" / "b.txt").write_text("img_b\n")
    _register(parts_b={"format": "voc", "root": root, "split": "b"})
    assert get_dataset("parts_b")[1]["class_names"] == ["bolt", "nut"]


def test_voc_style_unknown_class_follows_the_policy(tmp_path):
    root = make_voc_style(tmp_path / "parts")
    (tmp_path / "classes.txt").write_text("nut\n")
    cfg = _register(p={"format": "voc", "root": root, "classes": tmp_path / "classes.txt"})
    with pytest.raises(DatasetError, match=r"img_a.xml: object 0: category 'bolt' is not a known category"):
        get_dataset("p", policy=cfg.datasets)
    records, meta = get_dataset("p", policy=detection_cfg("datasets.unknown_category=skip").datasets)
    assert meta["sanitize_counts"].to_dict()["counts"] == {"unknown_category skipped": 1}
    assert sum(len(r["annotations"]) for r in records) == 2


def test_voc_mini_read_as_an_own_voc_style_dataset(shared_data):
    root = shared_data / "voc_mini" / "VOCdevkit" / "VOC2007"
    _register(mini={"format": "voc", "root": root, "split": "trainval"})
    records, meta = get_dataset("mini")
    reference = load_voc_split(root, "trainval", RecordSanitizer(BadRecordPolicy.default()))
    assert set(meta["class_names"]) <= set(VOC_CLASSES)
    assert len(records) == len(reference) > 0
    for own, ref in zip(records, reference):
        assert own["file_name"] == ref["file_name"] and own["image_id"] == ref["image_id"]
        named = [(meta["class_names"][a["label"] - 1], a["bbox"], a["difficult"]) for a in own["annotations"]]
        assert named == [(VOC_CLASSES[a["label"] - 1], a["bbox"], a["difficult"]) for a in ref["annotations"]]
    assert sum(a["difficult"] for r in records for a in r["annotations"]) >= 1


def test_yolo_data_yaml_splits_by_folder(tmp_path):
    data = make_yolo(tmp_path / "yolo")
    _register(
        y_train={"format": "yolo", "classes": data, "split": "train"},
        y_val={"format": "yolo", "classes": data, "split": "val"},
    )
    records, meta = get_dataset("y_train")
    assert meta["class_names"] == YOLO_NAMES and meta["evaluator"] == "coco"
    assert [(r["width"], r["height"]) for r in records] == [(64, 48), (32, 32)]  # sizes from the images
    # class cx cy w h (fractions) -> label class + 1, pixels XYXY.
    assert _boxes(records) == {"a.png": [(1, [24.0, 12.0, 40.0, 36.0]), (3, [0.0, 0.0, 16.0, 24.0])], "b.jpg": []}
    val, _ = get_dataset("y_val")
    assert _boxes(val) == {"c.png": [(2, [0.0, 0.0, 40.0, 40.0])]}


def test_yolo_names_file_and_list_file(tmp_path):
    make_yolo(tmp_path / "yolo")
    (tmp_path / "yolo" / "names.txt").write_text("\n".join(YOLO_NAMES) + "\n")
    (tmp_path / "yolo" / "some.txt").write_text("./images/val/c.png\nimages/train/a.png\n")
    _register(
        y={"format": "yolo", "classes": tmp_path / "yolo" / "names.txt", "images": tmp_path / "yolo" / "some.txt"}
    )
    records, _ = get_dataset("y")
    assert list(_boxes(records)) == ["c.png", "a.png"]
    assert [r["image_id"] for r in records] == [1, 2]


def test_yolo_bad_records_follow_the_policies(tmp_path):
    labels = {
        "train/a.png": ((40, 40), "0 0.5 0.5 0.5 0.5\n7 0.5 0.5 0.1 0.1\n1 0.5 0.5 0 0.2\n1 0.9 0.9 0.4 0.4\n"),
        "train/b.png": ((40, 40), None),
    }
    data = make_yolo(tmp_path / "yolo", labels)
    (tmp_path / "yolo" / "images" / "train" / "b.png").write_bytes(b"not an image")
    cfg = _register(y={"format": "yolo", "classes": data, "split": "train"})
    with pytest.raises(DatasetError, match=r"a.txt: line 2: category 7 is not a known .*unknown_category=skip"):
        get_dataset("y", policy=cfg.datasets)
    with pytest.raises(DatasetError, match=r"b.png: cannot be decoded .*datasets.corrupt_image=skip"):
        get_dataset("y", policy=detection_cfg("datasets.unknown_category=skip").datasets)
    policy = detection_cfg("datasets.unknown_category=skip", "datasets.corrupt_image=skip").datasets
    records, meta = get_dataset("y", policy=policy)
    assert meta["sanitize_counts"].to_dict()["counts"] == {
        "bad_boxes skipped": 1,
        "boxes_outside fixed": 1,
        "corrupt_image skipped": 1,
        "unknown_category skipped": 1,
    }
    assert _boxes(records) == {"a.png": [(1, [10.0, 10.0, 30.0, 30.0]), (2, [28.0, 28.0, 40.0, 40.0])]}


def test_yolo_malformed_line_is_one_line_error(tmp_path):
    data = make_yolo(tmp_path / "yolo", {"train/a.png": ((20, 20), "0 0.5 0.5 0.5\n")})
    _register(y={"format": "yolo", "classes": data, "split": "train"})
    with pytest.raises(DatasetError, match=r"a.txt: line 1: 4 numbers; a YOLO line is 'class cx cy w h'"):
        get_dataset("y")


def test_coco_format_is_the_default(tmp_path):
    json_path, images = make_coco(tmp_path)
    _register(c={"images": images, "annotations": json_path})
    records, meta = get_dataset("c")
    assert meta["format"] == "coco" and len(records) == 3
    assert json.loads(json_path.read_text())["categories"][0]["name"] == "zebra"


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"annotations": "a.json"}, "datasets.custom.x: format coco needs 'images' (the images folder); set it"),
        ({"format": "voc"}, "datasets.custom.x: format voc needs 'root' (the folder with Annotations/)"),
        ({"format": "voc", "root": "r", "annotations": "a"}, "'annotations' is not used by format voc"),
        ({"format": "yolo"}, "format yolo needs 'classes' (an ultralytics data.yaml or a names file)"),
        ({"format": "yolo", "classes": "d.yaml"}, "with a data.yaml as 'classes', give 'split'"),
        ({"format": "yolo", "classes": "n.txt", "split": "train"}, "with a names file as 'classes', give 'images'"),
        (
            {"format": "yaml"},
            "datasets.custom.x.format=yaml: Invalid value 'yaml', expected one of ['coco', 'voc', 'yolo']",
        ),
    ],
)
def test_config_fields_are_checked_per_format(entry, message):
    with pytest.raises(ConfigError) as info:
        _register(x=entry)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_files_name_the_key(tmp_path):
    _register(v={"format": "voc", "root": tmp_path / "nowhere"})
    with pytest.raises(DatasetError, match=r"root of dataset 'v' not found: .*nowhere; fix datasets.custom.v.root"):
        get_dataset("v")
    _register(y={"format": "yolo", "classes": tmp_path / "data.yaml", "split": "val"})
    with pytest.raises(DatasetError, match=r"classes of dataset 'y' not found: .*; fix datasets.custom.y.classes"):
        get_dataset("y")
