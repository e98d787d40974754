"""Bad inputs: odd and broken image files, malformed annotations, and the fix/skip/stop policies."""

import json
import logging
import math
import uuid

import cv2
import numpy as np
import pytest
from data_fixtures import coco_dict, detection_cfg, make_coco, make_voc, write_image

from resnet_det.data import (
    BadRecordPolicy,
    build_detection_test_loader,
    build_detection_train_loader,
    get_dataset,
    read_image,
    register_coco_instances,
)
from resnet_det.data.sanitize import SanitizeReport
from resnet_det.errors import ConfigError, DatasetError


def _policy(**changes) -> BadRecordPolicy:
    return BadRecordPolicy(**{**BadRecordPolicy.default().__dict__, **changes})


def _load(tmp_path, data, write_images=True, **policy):
    """Register and read ``data`` (with the images of ``coco_dict()``, unless not written)."""
    json_path, images_dir = make_coco(tmp_path, coco_dict(), write_images)
    json_path.write_text(json.dumps(data, indent=1))
    name = f"test_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, images_dir, json_path)
    return get_dataset(name, policy=_policy(**policy))


# Image files


def test_grayscale_rgba_and_16_bit_images_are_converted(tmp_path):
    gray = write_image(tmp_path / "gray.png", 5, 7, channels=1)
    rgba = write_image(tmp_path / "rgba.png", 5, 7, channels=4)
    deep = write_image(tmp_path / "deep.png", 5, 7, dtype=np.uint16)
    for name in ("gray.png", "rgba.png", "deep.png"):
        image = read_image(tmp_path / name)
        assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    assert (read_image(tmp_path / "gray.png") == gray[..., None]).all()
    assert (read_image(tmp_path / "rgba.png") == rgba[..., 2::-1]).all()  # BGRA on disk -> RGB, alpha dropped
    assert np.abs(read_image(tmp_path / "deep.png").astype(int) - deep[..., ::-1] / 257).max() <= 0.5


def test_zero_byte_and_truncated_images_name_the_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    ok, jpeg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8))
    (tmp_path / "cut.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    for name in ("empty.jpg", "cut.jpg"):
        with pytest.raises(DatasetError) as e:
            read_image(tmp_path / name)
        assert str(e.value) == (
            f"cannot decode image {tmp_path / name} (corrupt or truncated file): "
            "remove it from the annotations or replace it"
        )
    with pytest.raises(DatasetError, match=r"cannot read image .*/gone.jpg \(No such file or directory\)"):
        read_image(tmp_path / "gone.jpg")


def test_corrupt_image_stops_or_is_replaced_in_training_and_left_out_in_testing(tmp_path, caplog):
    records, _ = _load(tmp_path, coco_dict())
    (tmp_path / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cfg = detection_cfg("input.min_size_train=[32]", "solver.batch_size=2", "input.min_size_test=32")
    with pytest.raises(DatasetError, match=r"cannot decode image .*a.png .*; or set datasets.corrupt_image=skip"):
        next(iter(build_detection_train_loader(cfg, records)))
    cfg.datasets.corrupt_image = "skip"
    with caplog.at_level(logging.WARNING):
        _, targets = next(iter(build_detection_train_loader(cfg, records)))
    assert [t["image_id"] for t in targets] == [2, 2]  # image 1 replaced by the only other one
    assert "skipping an unreadable image" in caplog.text and "a.png" in caplog.text
    infos = [i for _, batch in build_detection_test_loader(cfg, records) for i in batch]
    assert [i["image_id"] for i in infos] == [2, 5]


def test_image_larger_than_annotated_uses_the_real_size(tmp_path, caplog):
    data = coco_dict()
    records, _ = _load(tmp_path, data)
    write_image(tmp_path / "images" / "b.png", 30, 20)  # annotated 60 x 40, box [5, 10, 35, 50]
    cfg = detection_cfg(
        "input.min_size_train=[20]", "input.max_size_train=1000", "input.hflip_prob=0", "solver.batch_size=1"
    )
    with caplog.at_level(logging.WARNING):
        images, targets = next(iter(build_detection_train_loader(cfg, [r for r in records if r["image_id"] == 2])))
    assert images[0].shape == (3, 30, 20)
    assert targets[0]["boxes"].tolist() == [[5.0, 10.0, 20.0, 30.0]]  # clipped to the real 20 x 30
    assert "is 20x30 but annotated as 40x60; using the real size" in caplog.text
    infos = next(iter(build_detection_test_loader(cfg, records[1:2])))[1]
    assert infos[0]["orig_size"] == (30, 20)


# Annotation files


def test_malformed_json_names_the_line(tmp_path):
    json_path, images_dir = make_coco(tmp_path)
    text = json_path.read_text()
    json_path.write_text(text.replace('"file_name": "b.png"', '"file_name" "b.png"'))
    line = text[: text.index('"file_name": "b.png"')].count("\n") + 1
    name = f"test_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, images_dir, json_path)
    with pytest.raises(DatasetError) as e:
        get_dataset(name)
    assert str(e.value).startswith(f"{json_path}: line {line} column ")
    assert "malformed JSON (Expecting ':' delimiter); fix or re-download the file" in str(e.value)


@pytest.mark.parametrize(
    "section, index, field, message",
    [
        ("images", 1, "height", r"images\[1\] \(id 2\) has no 'height'; add it \(a positive integer\)"),
        ("annotations", 0, "bbox", r"annotations\[0\] \(id 1\) has no 'bbox'; add it \(\[x, y, width, height\]\)"),
        ("categories", 2, "name", r"categories\[2\] \(id 7\) has no 'name'"),
    ],
)
def test_missing_fields_name_the_record_and_field(tmp_path, section, index, field, message):
    data = coco_dict()
    del data[section][index][field]
    with pytest.raises(DatasetError, match=message):
        _load(tmp_path, data)


def test_wrong_field_types_and_dangling_references_are_named(tmp_path):
    data = coco_dict()
    data["images"][0]["width"] = -60
    with pytest.raises(DatasetError, match=r"images\[0\] \(id 1\): 'width' is -60, expected a positive integer"):
        _load(tmp_path / "a", data)
    data = coco_dict()
    data["annotations"][2]["image_id"] = 99
    with pytest.raises(DatasetError, match=r"annotation 3 refers to image_id 99, not in 'images'"):
        _load(tmp_path / "b", data)


def test_duplicate_image_ids_stop(tmp_path):
    data = coco_dict()
    data["images"][2]["id"] = 2
    with pytest.raises(DatasetError, match=r"images id 2 is used twice; give every entry of 'images' a unique id"):
        _load(tmp_path, data)


def test_duplicate_image_ids_from_any_loader_stop(tmp_path):
    from resnet_det.data.sanitize import RecordSanitizer

    write_image(tmp_path / "x.png", 4, 4)
    write_image(tmp_path / "y.png", 4, 4)
    record = {"file_name": str(tmp_path / "x.png"), "image_id": 3, "height": 4, "width": 4, "annotations": []}
    with pytest.raises(DatasetError, match=r"my_data: image id 3 is used twice \(.*x.png and .*y.png\)"):
        RecordSanitizer(_policy()).clean([record, {**record, "file_name": str(tmp_path / "y.png")}], 1, "my_data")


def test_malformed_voc_xml_names_the_line(tmp_path):
    objects = [{"name": "cat", "box": (1, 1, 5, 5)}]
    voc_root = make_voc(tmp_path, "2007", "test", {"000001": {"size": (20, 20), "objects": objects}})
    xml = voc_root / "Annotations" / "000001.xml"
    xml.write_text(xml.read_text().replace("</size>", "</size>\n<object><name>cat</name>\n<bndbox></object>"))
    with pytest.raises(DatasetError, match=rf"{xml}: line 3 column \d+: malformed XML \(mismatched tag"):
        get_dataset("voc_2007_test", root=tmp_path)


def test_voc_objects_without_box_or_with_unknown_class(tmp_path):
    objects = [{"name": "unicorn", "box": (1, 1, 5, 5)}, {"name": "cat", "box": (2, 2, "x", 5)}]
    voc_root = make_voc(tmp_path, "2007", "test", {"000001": {"size": (20, 20), "objects": objects}})
    xml = voc_root / "Annotations" / "000001.xml"
    unknown = rf"{xml}: object 0: category 'unicorn' is not a known category; .* datasets.unknown_category=skip"
    with pytest.raises(DatasetError, match=unknown):
        get_dataset("voc_2007_test", root=tmp_path)
    with pytest.raises(DatasetError, match=rf"{xml}: object 1 <bndbox>: <xmax> is missing or not a number \('x'\)"):
        get_dataset("voc_2007_test", root=tmp_path, policy=_policy(unknown_category="skip"))


# Policies


def test_bad_boxes_are_skipped_and_counted_or_stop(tmp_path):
    data = coco_dict()
    data["annotations"][0]["bbox"] = [10, 5, 0, 15]  # zero width
    data["annotations"][2]["bbox"] = [5, 10, -3, 40]  # negative width
    data["annotations"][1]["bbox"] = [math.nan, 0, 60, 40]
    records, meta = _load(tmp_path / "a", json.loads(json.dumps(data)))
    assert [len(r["annotations"]) for r in records] == [0, 1, 0]
    report = meta["sanitize_counts"]
    assert report == {"bad_boxes skipped": 3}
    assert report.summary() == "skipped: 3 boxes with zero/negative size or non-finite coordinates"
    assert report.examples["bad_boxes skipped"].endswith("box 0 [10, 5, 10, 20]: no area")
    message = r"image 1 \(.*a.png\) box 0 \[10, 5, 10, 20\]: no area; fix or remove the annotation"
    with pytest.raises(DatasetError, match=message + ", or set datasets.bad_boxes=skip"):
        _load(tmp_path / "b", data, bad_boxes="stop")


def test_boxes_outside_the_image_are_clipped_skipped_or_stop(tmp_path):
    data = coco_dict()
    data["annotations"][0]["bbox"] = [-5, 30, 20, 20]  # partly outside the 60 x 40 image
    data["annotations"][2]["bbox"] = [50, 70, 5, 5]  # entirely below the 40 x 60 image
    records, meta = _load(tmp_path / "a", data)
    assert records[0]["annotations"][0]["bbox"] == [0.0, 30.0, 15.0, 40.0]
    assert [a["iscrowd"] for a in records[1]["annotations"]] == [1]
    assert meta["sanitize_counts"].summary() == "fixed: 1 boxes outside the image; skipped: 1 boxes outside the image"
    records, meta = _load(tmp_path / "b", data, boxes_outside="skip")
    assert len(records[0]["annotations"]) == 1
    assert meta["sanitize_counts"] == {"boxes_outside skipped": 2}
    with pytest.raises(DatasetError, match="outside the 60x40 image; fix the annotation, or set datasets.boxes_out"):
        _load(tmp_path / "c", data, boxes_outside="stop")


def test_rounding_noise_at_the_border_is_clipped_without_counting(tmp_path):
    data = coco_dict()
    data["annotations"][1]["bbox"] = [0.3, 0, 59.71, 40.004]  # x + w = 60.01 in a 60 x 40 image
    records, meta = _load(tmp_path, data, boxes_outside="stop")
    assert records[0]["annotations"][1]["bbox"] == [0.3, 0.0, 60.0, 40.0]
    assert meta["sanitize_counts"].total() == 0


def test_unknown_categories_stop_or_are_skipped(tmp_path):
    data = coco_dict()
    data["annotations"][1]["category_id"] = 42
    with pytest.raises(DatasetError, match=r"annotations.json: annotation 2 \(image 1\): category 42 is not a known"):
        _load(tmp_path / "a", data)
    records, meta = _load(tmp_path / "b", data, unknown_category="skip")
    assert len(records[0]["annotations"]) == 1
    assert meta["sanitize_counts"] == {"unknown_category skipped": 1}


def test_missing_images_stop_or_are_skipped(tmp_path):
    message = r"annotations.json: image 1: .*images/a.png does not exist; put the image there or remove its record"
    with pytest.raises(DatasetError, match=message + ", or set datasets.missing_image=skip"):
        _load(tmp_path / "a", coco_dict(), write_images=False)
    records, meta = _load(tmp_path / "b", coco_dict(), write_images=False, missing_image="skip")
    assert records == [] and meta["sanitize_counts"] == {"missing_image skipped": 3}
    # The policy may also be given as the config's datasets node.
    cfg = detection_cfg("datasets.missing_image=skip")
    assert get_dataset(meta["name"], policy=cfg.datasets)[1]["sanitize_counts"] == {"missing_image skipped": 3}


def test_policies_that_make_no_sense_are_refused():
    with pytest.raises(ConfigError, match=r"datasets.bad_boxes=fix is not possible: a box .*; use skip or stop"):
        _policy(bad_boxes="fix")
    with pytest.raises(ConfigError, match="datasets.missing_image=ignore is not possible: use skip or stop"):
        _policy(missing_image="ignore")
    with pytest.raises(ConfigError, match="datasets.corrupt_image=fix"):  # when the config loads
        detection_cfg("datasets.corrupt_image=fix")


def test_reports_merge_and_keep_the_first_example():
    a, b = SanitizeReport(), SanitizeReport()
    a.add("missing_image", "skipped", "first")
    b.add("missing_image", "skipped", "second")
    b.add("boxes_outside", "fixed", "clipped")
    a.merge(b)
    assert a.total() == 3
    assert json.loads(json.dumps(a.to_dict())) == {
        "counts": {"boxes_outside fixed": 1, "missing_image skipped": 2},
        "examples": {"boxes_outside fixed": "clipped", "missing_image skipped": "first"},
    }
    assert a.summary() == "fixed: 1 boxes outside the image; skipped: 2 missing images"
