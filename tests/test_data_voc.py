"""PASCAL VOC reading: coordinates, difficult/truncated flags, parts, splits; on real XML too."""

from collections import Counter

import pytest
from data_fixtures import make_voc

from resnet_det.data import VOC_CLASSES, get_dataset
from resnet_det.data.build import train_records
from resnet_det.data.voc import voc_image_id
from resnet_det.errors import DatasetError


def test_the_twenty_classes_in_standard_order():
    assert len(VOC_CLASSES) == 20
    assert VOC_CLASSES[:3] == ("aeroplane", "bicycle", "bird") and VOC_CLASSES[-1] == "tvmonitor"
    assert VOC_CLASSES.index("person") == 14


def test_one_based_inclusive_boxes_become_zero_based_continuous(tmp_path):
    objects = [{"name": "dog", "box": (1, 1, 50, 40)}]
    make_voc(tmp_path, "2007", "trainval", {"000007": {"size": (50, 40), "objects": objects}})
    records, meta = get_dataset("voc_2007_trainval", root=tmp_path)
    (record,) = records
    # The whole 50x40 image: pixels 1..50 x 1..40 span [0, 50) x [0, 40).
    assert record["annotations"][0]["bbox"] == [0.0, 0.0, 50.0, 40.0]
    assert record["annotations"][0]["label"] == VOC_CLASSES.index("dog") + 1
    assert (record["image_id"], record["voc_id"]) == (7, "000007")
    assert (record["width"], record["height"]) == (50, 40)
    assert record["file_name"].endswith("VOCdevkit/VOC2007/JPEGImages/000007.jpg")
    assert meta["label_to_category_id"] == {i: i for i in range(1, 21)}
    assert (meta["evaluator"], meta["year"], meta["image_set"]) == ("voc", "2007", "trainval")
    assert meta["voc_root"] == str((tmp_path / "VOCdevkit" / "VOC2007").resolve())


def test_difficult_and_truncated_flags_and_nested_parts(tmp_path):
    objects = [
        {
            "name": "person",
            "box": (11, 21, 30, 60),
            "truncated": 1,
            "parts": [("head", (12, 22, 20, 30)), ("hand", (25, 40, 29, 45))],
        },
        {"name": "chair", "box": (31, 5, 60, 35), "difficult": 1},
    ]
    make_voc(tmp_path, "2007", "test", {"000001": {"size": (64, 64), "objects": objects}})
    (record,), _ = get_dataset("voc_2007_test", root=tmp_path)
    anns = record["annotations"]
    assert [a["bbox"] for a in anns] == [[10.0, 20.0, 30.0, 60.0], [30.0, 4.0, 60.0, 35.0]]  # parts are not objects
    assert [(a["difficult"], a["truncated"]) for a in anns] == [(0, 1), (1, 0)]
    assert [len(r["annotations"]) for r in train_records([record])] == [1]
    assert [len(r["annotations"]) for r in train_records([record], use_difficult=True)] == [2]


def test_image_ids_are_ints_distinct_across_years():
    assert voc_image_id("000005") == 5
    assert voc_image_id("2008_000123") == 2008000123
    assert voc_image_id("my_photo") == voc_image_id("my_photo") != voc_image_id("my_photo2")


def test_missing_split_names_the_file_and_the_download(tmp_path):
    with pytest.raises(DatasetError) as e:
        get_dataset("voc_2007_test", root=tmp_path)
    assert str(e.value).startswith(f"VOC2007 test not found: {tmp_path}/VOCdevkit/VOC2007/ImageSets/Main/test.txt;")
    assert "VOCtest_06-Nov-2007.tar" in str(e.value)


def test_real_voc_xml(shared_data):
    root = shared_data / "voc_mini"
    records, meta = get_dataset("voc_0712_trainval", root=root)
    anns = [a for r in records for a in r["annotations"]]
    assert len(records) == 10 and len(anns) == 28
    assert sum(a["difficult"] for a in anns) == 2
    assert meta["year"] == "2012" and meta["class_names"] == list(VOC_CLASSES)
    person = next(r for r in records if r["voc_id"] == "2007_000027")
    # One person (its head/hand/foot <part>s are not objects): xml 174,101,349,351.
    person_label = VOC_CLASSES.index("person") + 1
    assert [(a["label"], a["bbox"]) for a in person["annotations"]] == [(person_label, [173.0, 100.0, 349.0, 351.0])]
    assert person["image_id"] == 2007000027 and (person["width"], person["height"]) == (486, 500)
    five = next(r for r in records if r["voc_id"] == "000005")
    assert sum(a["difficult"] for a in five["annotations"]) == 2
    assert Counter(VOC_CLASSES[a["label"] - 1] for a in anns) == {
        "car": 7,
        "chair": 6,
        "aeroplane": 5,
        "person": 4,
        "train": 3,
        "dog": 1,
        "sofa": 1,
        "tvmonitor": 1,
    }
    test_records, test_meta = get_dataset("voc_2007_test", root=root)
    assert len(test_records) == 5 and (test_meta["year"], test_meta["image_set"]) == ("2007", "test")
