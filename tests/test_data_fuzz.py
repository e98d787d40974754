"""Fuzzing the annotation readers: any COCO json or VOC XML either loads or raises DatasetError.

A loaded dataset must honour the records contract whatever the input was: boxes with an area
inside their image, labels in 1..K.
"""

import json
import math
import uuid

import pytest
from data_fixtures import coco_dict, make_coco, write_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnet_det.data import BadRecordPolicy, get_dataset, register_coco_instances
from resnet_det.errors import DatasetError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

policies = st.builds(
    BadRecordPolicy,
    bad_boxes=st.sampled_from(["skip", "stop"]),
    boxes_outside=st.sampled_from(["fix", "skip", "stop"]),
    unknown_category=st.sampled_from(["skip", "stop"]),
    missing_image=st.sampled_from(["skip", "stop"]),
    corrupt_image=st.sampled_from(["skip", "stop"]),
)

scalars = st.one_of(
    st.integers(-3, 80),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    st.integers(),
)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
# Typical values first (hypothesis prefers small integers, i.e. boxes without area).
coordinates = st.one_of(
    st.sampled_from([5, 12, 20.5, 33, 0, -4, 47]), st.floats(-10, 50), st.sampled_from([math.nan, math.inf])
)
field_values = st.one_of(
    st.sampled_from([1, 2, 3, 5, 7, 11, 42, 0, -1, 60, True, "a.png", "missing.png", ""]),
    st.lists(coordinates, min_size=4, max_size=4),
    anything,
)
COCO_FIELDS = ["id", "file_name", "height", "width", "image_id", "category_id", "bbox", "iscrowd", "name"]


def _mutated(mutations) -> dict:
    """``coco_dict()`` with each ``(section, index, field, delete, value)`` applied to an entry's
    field; an index past the section's end deletes or replaces the whole section."""
    document = coco_dict()
    for section, index, field, delete, value in mutations:
        items = document.get(section)
        entry = items[index] if isinstance(items, list) and index < len(items) else None
        target, key = (entry, field) if isinstance(entry, dict) else (document, section)
        if delete:
            target.pop(key, None)
        else:
            target[key] = value
    return document


mutations = st.tuples(
    st.sampled_from(["images", "annotations", "categories"]),
    st.integers(0, 4),
    st.sampled_from(COCO_FIELDS + ["bbox"] * 3),  # mostly boxes: the policies act on them
    st.booleans(),
    field_values,
)
coco_documents = st.lists(mutations, max_size=3).map(_mutated)


@pytest.fixture(scope="module")
def coco_dataset(tmp_path_factory):
    json_path, images_dir = make_coco(tmp_path_factory.mktemp("fuzz_coco"))
    name = f"fuzz_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, images_dir, json_path)
    return name, json_path


def _loads_or_raises_dataset_error(name, **kwargs):
    """Load ``name``: either records that honour the contract, or a one-line DatasetError."""
    try:
        records, meta = get_dataset(name, **kwargs)
    except DatasetError as e:
        assert "\n" not in str(e)
        return
    for record in records:
        for ann in record["annotations"]:
            x0, y0, x1, y1 = ann["bbox"]
            assert all(map(math.isfinite, ann["bbox"]))
            assert 0 <= x0 < x1 <= record["width"] and 0 <= y0 < y1 <= record["height"]
            assert 1 <= ann["label"] <= len(meta["class_names"]) and ann["iscrowd"] in (0, 1)


@FUZZ
@given(document=coco_documents, policy=policies)
def test_coco_json_loads_or_raises_dataset_error(coco_dataset, document, policy):
    name, path = coco_dataset
    path.write_text(json.dumps(document))
    _loads_or_raises_dataset_error(name, policy=policy)


@FUZZ
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode) | anything.map(json.dumps).map(str.encode))
def test_coco_bytes_load_or_raise_dataset_error(coco_dataset, data):
    name, path = coco_dataset
    path.write_bytes(data)
    _loads_or_raises_dataset_error(name)


garbage_text = st.text(max_size=40) | st.binary(max_size=60).map(lambda b: b.decode("latin-1"))


@st.composite
def voc_documents(draw):
    """Some garbage; mostly VOC XML where each tag is sometimes missing or holds a broken value.

    The choices come from a ``random.Random`` seeded by hypothesis, with explicit odds, so that
    most documents get past the first check (hypothesis' own choices favour the rare branches)."""
    rnd = draw(st.randoms(use_true_random=True))
    if rnd.random() < 0.2:
        return draw(garbage_text)

    def tag(name, typical, broken=("", "x", "nan", "-5", "1e400", " 7 ", None)):
        value = rnd.choice(broken) if rnd.random() < 0.08 else rnd.choice(typical)
        return "" if value is None else f"<{name}>{value}</{name}>"

    def bndbox():
        low, high = ["1", "3", "10", "0"], ["20", "25.5", "30", "31", "2"]
        coords = zip(("xmin", "ymin", "xmax", "ymax"), (low, low, high, high))
        return "<bndbox>" + "".join(tag(t, v) for t, v in coords) + "</bndbox>"

    objects = []
    for _ in range(rnd.randint(0, 4)):
        name = tag("name", ["cat", "dog", " person ", "tvmonitor"], broken=("unicorn", "", None))
        flags = tag("difficult", ["0", "1"], ("2", "x", None)) + tag("truncated", ["0", "1"], ("-1", None))
        box = bndbox() if rnd.random() < 0.95 else ""
        parts = "".join(f"<part><name>head</name>{bndbox()}</part>" for _ in range(rnd.randint(0, 2)))
        objects.append(f"<object>{name}{flags}{box}{parts}</object>")
    size = f"<size>{tag('width', ['30', '30.0'])}{tag('height', ['30', '24'])}</size>" if rnd.random() < 0.95 else ""
    return f"<annotation>{size}{''.join(objects)}</annotation>"


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_voc")
    voc = root / "VOCdevkit" / "VOC2007"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "ImageSets" / "Main" / "test.txt").write_text("000001\n")
    write_image(voc / "JPEGImages" / "000001.jpg", 30, 30)
    return root


@FUZZ
@given(document=voc_documents(), policy=policies)
def test_voc_xml_loads_or_raises_dataset_error(voc_root, document, policy):
    (voc_root / "VOCdevkit" / "VOC2007" / "Annotations" / "000001.xml").write_text(document, encoding="utf-8")
    _loads_or_raises_dataset_error("voc_2007_test", root=voc_root, policy=policy)
