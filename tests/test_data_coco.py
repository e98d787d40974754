"""COCO-format reading, the dataset registry and the data root."""

import uuid

import pytest
from data_fixtures import detection_cfg, make_coco

from resnet_det.data import (
    dataset_root,
    get_dataset,
    get_datasets,
    list_datasets,
    register_coco_instances,
    register_from_config,
)
from resnet_det.data.build import train_records
from resnet_det.errors import DatasetError


def _name() -> str:
    return f"test_{uuid.uuid4().hex[:8]}"  # the registry is global: a fresh name per test


@pytest.fixture
def tiny(tmp_path):
    name = _name()
    json_path, images_dir = make_coco(tmp_path)
    register_coco_instances(name, images_dir, json_path)
    return name, json_path, images_dir


def test_category_ids_become_contiguous_labels_and_map_back(tiny):
    name, json_path, _ = tiny
    records, meta = get_dataset(name)
    assert meta["class_names"] == ["cat", "dog", "zebra"]  # sorted by category id 3, 7, 11
    assert meta["label_to_category_id"] == {1: 3, 2: 7, 3: 11}
    assert meta["evaluator"] == "coco" and meta["annotations_file"] == str(json_path.resolve())
    by_id = {r["image_id"]: r for r in records}
    labels = [a["label"] for a in by_id[1]["annotations"]]
    assert [meta["label_to_category_id"][label] for label in labels] == [3, 11]
    assert [meta["class_names"][label - 1] for label in labels] == ["cat", "zebra"]


def test_boxes_are_converted_from_xywh_to_xyxy_with_absolute_paths(tiny):
    name, _, images_dir = tiny
    records, _ = get_dataset(name)
    first = next(r for r in records if r["image_id"] == 1)
    assert first["annotations"][0]["bbox"] == [10.0, 5.0, 30.0, 20.0]
    assert first["file_name"] == str(images_dir.resolve() / "a.png")
    assert (first["height"], first["width"]) == (40, 60)


def test_crowd_regions_are_flagged_and_dropped_only_for_training(tiny):
    name, _, _ = tiny
    records, _ = get_dataset(name)
    second = next(r for r in records if r["image_id"] == 2)
    assert [a["iscrowd"] for a in second["annotations"]] == [0, 1]
    trained = next(r for r in train_records(records) if r["image_id"] == 2)
    assert [a["iscrowd"] for a in trained["annotations"]] == [0]


def test_images_without_boxes_are_kept_unless_filtered_for_training(tiny):
    name, _, _ = tiny
    records, _ = get_dataset(name)
    assert [r["image_id"] for r in records] == [1, 2, 5]
    assert next(r for r in records if r["image_id"] == 5)["annotations"] == []
    assert [r["image_id"] for r in train_records(records)] == [1, 2]
    assert [r["image_id"] for r in train_records(records, filter_empty=False)] == [1, 2, 5]


def test_datasets_from_the_config_are_registered_once(tmp_path):
    json_path, images_dir = make_coco(tmp_path)
    name = _name()
    cfg = detection_cfg(f"datasets.custom={{{name}: {{images: {images_dir}, annotations: {json_path}}}}}")
    register_from_config(cfg.datasets)
    register_from_config(cfg.datasets)  # the same files again: a no-op
    assert name in list_datasets()
    assert len(get_dataset(name)[0]) == 3
    with pytest.raises(DatasetError, match=f"'{name}' is already registered"):
        register_coco_instances(name, images_dir, tmp_path / "other.json")


def test_custom_dataset_with_missing_files_names_the_config_key(tmp_path):
    name = _name()
    register_coco_instances(name, tmp_path / "images", tmp_path / "missing.json")
    with pytest.raises(DatasetError, match=rf"missing\.json; fix datasets\.custom\.{name}\.annotations"):
        get_dataset(name)


def test_unknown_dataset_lists_the_known_names():
    with pytest.raises(DatasetError) as e:
        get_dataset("coco_2071_val")
    assert "unknown dataset 'coco_2071_val'" in str(e.value)
    for builtin in ("coco_2017_train", "coco_2017_val", "voc_0712_trainval", "voc_2007_test", "shapes_train"):
        assert builtin in str(e.value)


def test_missing_coco_says_where_to_put_it(tmp_path):
    with pytest.raises(DatasetError) as e:
        get_dataset("coco_2017_val", root=tmp_path)
    message = str(e.value)
    assert message.startswith(f"COCO annotations not found: {tmp_path}/coco/annotations/instances_val2017.json;")
    assert "download the COCO 2017 annotations" in message and "--data-root" in message
    assert "\n" not in message


def test_missing_coco_images_folder_is_named(tmp_path):
    make_coco(tmp_path / "coco", write_images=False)
    (tmp_path / "coco" / "annotations").mkdir()
    (tmp_path / "coco" / "annotations.json").rename(tmp_path / "coco" / "annotations" / "instances_val2017.json")
    with pytest.raises(DatasetError, match=rf"COCO images not found: {tmp_path}/coco/val2017; download val2017.zip"):
        get_dataset("coco_2017_val", root=tmp_path)


def test_data_root_is_explicit_then_environment_then_default(monkeypatch, tmp_path):
    monkeypatch.delenv("RESNET_DET_DATASETS", raising=False)
    assert str(dataset_root()) == "datasets"
    monkeypatch.setenv("RESNET_DET_DATASETS", str(tmp_path / "env"))
    assert dataset_root() == tmp_path / "env"
    assert dataset_root(tmp_path / "explicit") == tmp_path / "explicit"


def test_several_datasets_concatenate_and_must_share_classes(tmp_path):
    a, b, c = _name(), _name(), _name()
    for name in (a, b):
        json_path, images_dir = make_coco(tmp_path / name)
        register_coco_instances(name, images_dir, json_path)
    records, meta = get_datasets([a, b])
    assert len(records) == 6 and meta["name"] == f"{a}+{b}"
    json_path, images_dir = make_coco(tmp_path / c)
    json_path.write_text(json_path.read_text().replace('"zebra"', '"horse"'))
    register_coco_instances(c, images_dir, json_path)
    with pytest.raises(DatasetError, match="different classes"):
        get_datasets([a, c])


def test_real_coco_subset_loads_with_its_counts(shared_data):
    name = _name()
    register_coco_instances(name, shared_data / "coco_mini" / "images", shared_data / "coco_mini" / "annotations.json")
    records, meta = get_dataset(name)
    anns = [a for r in records for a in r["annotations"]]
    assert len(records) == 128
    assert len(anns) == 939
    assert sum(a["iscrowd"] for a in anns) == 10
    assert sum(not r["annotations"] for r in records) == 2
    assert len(meta["class_names"]) == 80 and len({a["label"] for a in anns}) == 71
    assert meta["label_to_category_id"][1] == 1 and meta["label_to_category_id"][80] == 90
    image_9 = next(r for r in records if r["image_id"] == 9)
    bowls = [a["bbox"] for a in image_9["annotations"] if meta["class_names"][a["label"] - 1] == "bowl"]
    assert [1.08, 187.69, 1.08 + 611.59, 187.69 + 285.84] in bowls
    assert meta["sanitize_counts"].summary() == "no bad records"
