"""Reading COCO-format detection data: COCO 2017 itself, the shapes set, and a user's own data.

The json is checked field by field, so a malformed file is a one-line ``DatasetError`` naming the
file, the record and the field, never a ``KeyError``; pycocotools stays the reference for what the
file means (evaluation reads the ground truth with it), and the records list each image's boxes
in its order. Polygons are dropped before the file is parsed (no box detector needs them), and it
is parsed with ``orjson``: COCO train2017 loads in a few seconds and well under 1.5 GB. Category ids (COCO's run 1..90 with gaps) become contiguous labels 1..K
in category-id order; ``metadata["label_to_category_id"]`` maps them back for the detections
file. COCO boxes are ``[x, y, w, h]`` and become ``[x0, y0, x1, y1]``. Crowd regions are kept,
flagged ``iscrowd=1`` (the train loader drops them; COCOeval reads them from the json). An
annotation may carry ``"difficult": 1`` (not COCO's, ignored by pycocotools; ``convert.py`` writes
it so that VOC's flag survives a round trip through COCO).
A ``file_name`` is relative to the images folder and must stay inside it (no absolute paths, no
``..`` out of it); a json larger than ``$RESNET_DET_MAX_JSON_BYTES`` is refused unread.
"""

import itertools
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Tuple

import numpy as np
import orjson

from resnet_det.data.records import RecordStore
from resnet_det.data.sanitize import RecordSanitizer, is_number
from resnet_det.errors import DatasetError
from resnet_det.utils.file_io import read_json
from resnet_det.utils.limits import check_json_size
from resnet_det.utils.safe_paths import inside


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_items(data: dict, key: str, fields: dict, path: Path, required: bool = True) -> list:
    """``data[key]`` as a list of dicts whose ``fields`` (name -> (check, what)) are all valid."""
    if key not in data and not required:
        return []
    items = data.get(key)
    if not isinstance(items, list):
        raise DatasetError(f"{path}: '{key}' is missing or not a list; {_LAYOUT}")
    fast = _FAST_CHECKS.get(key)
    if fast is not None and all(map(fast, items)):
        return items
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DatasetError(f"{path}: {key}[{i}] is not an object; fix the file")
        for name, (check, what) in fields.items():
            where = f"{path}: {key}[{i}] (id {item.get('id')!r})"
            if name not in item:
                raise DatasetError(f"{where} has no '{name}'; add it ({what})")
            if not check(item[name]):
                raise DatasetError(f"{where}: '{name}' is {item[name]!r}, expected {what}; fix it")
    return items


_LAYOUT = "a COCO instances file is an object with images, annotations, categories"
_POSITIVE_INT = (lambda v: _is_int(v) and v > 0, "a positive integer")
_INT = (_is_int, "an integer")
_IMAGE_FIELDS = {
    "id": _INT,
    "file_name": (lambda v: isinstance(v, str) and v != "", "a file name"),
    "height": _POSITIVE_INT,
    "width": _POSITIVE_INT,
}
_CATEGORY_FIELDS = {"id": _INT, "name": (lambda v: isinstance(v, str), "a string")}
_ANNOTATION_FIELDS = {
    "id": _INT,
    "image_id": _INT,
    "category_id": _INT,
    "bbox": (lambda v: isinstance(v, list) and len(v) == 4 and all(map(is_number, v)), "[x, y, width, height]"),
}


_NUMBER_TYPES = (int, float)


def _valid_annotation(a) -> bool:
    """``_ANNOTATION_FIELDS`` in one expression: the check of a COCO-sized file's 860k annotations."""
    if type(a) is not dict:
        return False
    box = a.get("bbox")
    return (
        type(a.get("id")) is int
        and type(a.get("image_id")) is int
        and type(a.get("category_id")) is int
        and type(box) is list
        and len(box) == 4
        and type(box[0]) in _NUMBER_TYPES
        and type(box[1]) in _NUMBER_TYPES
        and type(box[2]) in _NUMBER_TYPES
        and type(box[3]) in _NUMBER_TYPES
    )


def _valid_image(img) -> bool:
    if type(img) is not dict:
        return False
    name, height, width = img.get("file_name"), img.get("height"), img.get("width")
    return (
        type(img.get("id")) is int
        and type(name) is str
        and name != ""
        and type(height) is int
        and height > 0
        and type(width) is int
        and width > 0
    )


# A fast whole-list check per section; where it fails, the field-by-field check finds the error.
_FAST_CHECKS = {"annotations": _valid_annotation, "images": _valid_image}


# What no box detector needs, cut out of the file's bytes before it is parsed: polygon
# segmentations (lists of lists of numbers: most of a COCO file), areas, and the images' URLs and
# dates. A '"key":' only occurs as a key (quotes inside strings are escaped), and each value
# pattern stops where the value does, at the ',' or '}' after it. A value of another form (an RLE
# segmentation object, an escaped string) is left to the parser, and so is a key written after
# whitespace (a pretty-printed file is parsed whole): the patterns start with a literal, which
# ``re`` finds fast.
_UNUSED_VALUE = (
    rb'"(?:segmentation"\s*:\s*\[[-+0-9.eE,\s\[\]]*\]'
    rb'|area"\s*:\s*[-+0-9.eE]+'
    rb'|(?:coco_url|flickr_url|date_captured)"\s*:\s*"[^"\\]*")'
)
_UNUSED_FIRST = re.compile(rb"\{" + _UNUSED_VALUE + rb"(?:," + _UNUSED_VALUE + rb")*,?")  # -> "{"
_UNUSED_NEXT = re.compile(rb"," + _UNUSED_VALUE)  # -> ""
_STRIP_CHUNK = 1 << 23


def _strip_unused(raw: bytes) -> bytearray:
    """``raw`` without the unused values, a few MB at a time: one ``re.sub`` over the whole file
    would hold millions of pieces at once (twice the file's size). A chunk ends just after a '}',
    which a match never spans: a value with a '}' in it, cut there, is just left in."""
    out = bytearray()
    view = memoryview(raw)
    start = 0
    while start < len(raw):
        cut = raw.find(b"}", start + _STRIP_CHUNK)
        end = len(raw) if cut < 0 else cut + 1
        out += _UNUSED_NEXT.sub(b"", _UNUSED_FIRST.sub(b"{", view[start:end]))
        start = end
    return out


def _read_without_polygons(path: Path) -> Any:
    """The parsed JSON of a COCO file, ``_UNUSED`` cut out of it first: the polygons are most of a
    COCO file, and parsed they would be most of the memory of loading it."""
    check_json_size(path, DatasetError)
    try:
        raw = path.read_bytes()
    except OSError:
        return read_json(path, "annotation file", DatasetError)  # its one-line error
    stripped = _strip_unused(raw)
    del raw
    try:
        return _parse_in_parts(stripped)
    except orjson.JSONDecodeError:
        del stripped
        return read_json(path, "annotation file", DatasetError)  # the error at the file's own line/column


_PARSE_CHUNK = 1 << 23
_ANNOTATIONS_KEY = b'"annotations":['


def _parse_in_parts(text: bytearray) -> Any:
    """``orjson.loads(text)``, with the annotations array parsed a few MB at a time: the parser's
    own document of a whole COCO file would be a third again of the parsed objects.

    The text is cut at '},{': the part before the array, closed as ``..."annotations":[]}``, then
    parts of the array, each parsed as an array, until one does not parse (its cut is past the
    array's end or inside a string, which leaves a string or the array open), then the rest as
    ``{"annotations":[...``. Where the first or the last part does not parse (a key
    "annotations" that is not the top level's), the whole text is parsed at once.
    """
    start = text.find(_ANNOTATIONS_KEY)
    if start < 0 or len(text) < 2 * _PARSE_CHUNK:
        return orjson.loads(text)
    view = memoryview(text)
    try:
        data = orjson.loads(bytes(view[:start]) + b'"annotations":[]}')
        if not isinstance(data, dict):
            return orjson.loads(text)
        annotations: list = []
        begin = start + len(_ANNOTATIONS_KEY)
        while True:
            cut = text.find(b"},{", begin + _PARSE_CHUNK)
            if cut < 0:
                break
            try:
                part = orjson.loads(b"[" + bytes(view[begin : cut + 1]) + b"]")
            except orjson.JSONDecodeError:  # a cut past the array's end, or in a string
                break
            annotations += part
            begin = cut + 2
        rest = orjson.loads(b'{"annotations":[' + bytes(view[begin:]))
    except orjson.JSONDecodeError:
        return orjson.loads(text)
    annotations += rest.pop("annotations")
    data.update(rest, annotations=annotations)
    return data


def load_coco_json(
    annotations_json: os.PathLike, images_dir: os.PathLike, sanitizer: RecordSanitizer
) -> Tuple[RecordStore, dict]:
    """``(records, metadata)`` of a COCO instances file whose ``file_name``s are under ``images_dir``.

    The records are built as columns straight from the parsed file, which is released before
    this returns; an image's boxes are in file order (pycocotools' ``imgToAnns``)."""
    path = Path(annotations_json)
    data = _read_without_polygons(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: the top level is not an object; {_LAYOUT}")
    images = _check_items(data, "images", _IMAGE_FIELDS, path)
    categories = _check_items(data, "categories", _CATEGORY_FIELDS, path)
    annotations = _check_items(data, "annotations", _ANNOTATION_FIELDS, path, required=False)
    del data
    for key, items in (("images", images), ("categories", categories), ("annotations", annotations)):
        if len({item["id"] for item in items}) < len(items):
            dup = next(i for i, n in Counter(item["id"] for item in items).items() if n > 1)
            raise DatasetError(f"{path}: {key} id {dup} is used twice; give every entry of '{key}' a unique id")
    position = {img["id"]: i for i, img in enumerate(images)}
    owner = np.empty(len(annotations), dtype=np.int64)
    for k, ann in enumerate(annotations):
        i = position.get(ann["image_id"])
        if i is None:
            raise DatasetError(
                f"{path}: annotation {ann['id']} refers to image_id {ann['image_id']}, not in 'images'; fix or remove it"
            )
        for flag in ("iscrowd", "difficult"):
            if ann.get(flag, 0) not in (0, 1):
                raise DatasetError(
                    f"{path}: annotation {ann['id']}: '{flag}' is {ann[flag]!r}, expected 0 or 1; fix it"
                )
        owner[k] = i

    cat_ids = sorted({cat["id"] for cat in categories})
    label_of = {cat_id: label for label, cat_id in enumerate(cat_ids, start=1)}
    name_of = {cat["id"]: cat["name"] for cat in categories}
    metadata = {
        "class_names": [name_of[c] for c in cat_ids],
        "label_to_category_id": {label: cat_id for cat_id, label in label_of.items()},
        "evaluator": "coco",
        "annotations_file": str(path.resolve()),
    }
    label = np.fromiter((label_of.get(a["category_id"], 0) for a in annotations), np.int32, len(annotations))
    order = np.argsort(owner, kind="stable")  # by image, file order within each
    for k in order[label[order] == 0].tolist():
        ann = annotations[k]
        where = f"{path}: annotation {ann['id']} (image {images[owner[k]]['id']})"
        sanitizer.unknown_category(where, ann["category_id"])
    order = order[label[order] > 0]
    boxes = itertools.chain.from_iterable(annotations[k]["bbox"] for k in order.tolist())
    xywh = np.fromiter(boxes, dtype=np.float64, count=4 * len(order)).reshape(-1, 4)
    iscrowd = np.fromiter((annotations[k].get("iscrowd", 0) for k in order.tolist()), np.uint8, len(order))
    difficult = np.fromiter((annotations[k].get("difficult", 0) for k in order.tolist()), np.uint8, len(order))
    del annotations
    images_dir = os.path.abspath(images_dir)
    names = [inside(images_dir, img["file_name"], f"{path}: image {img['id']}").encode("utf-8") for img in images]
    columns = {
        "image_id": np.array([img["id"] for img in images], dtype=np.int64),
        "height": np.array([img["height"] for img in images], dtype=np.int32),
        "width": np.array([img["width"] for img in images], dtype=np.int32),
        "names": np.frombuffer(b"".join(names), dtype=np.uint8).copy(),
        "name_offsets": np.concatenate([[0], np.cumsum([len(n) for n in names])]).astype(np.int64),
        "box_offsets": np.concatenate([[0], np.cumsum(np.bincount(owner[order], minlength=len(images)))]),
        "bbox": np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
        "label": label[order],
        "iscrowd": iscrowd,
        "difficult": difficult,
        "extra_offsets": np.zeros(len(images) + 1, dtype=np.int64),
        "extras": np.zeros(0, dtype=np.uint8),
    }
    columns["box_offsets"] = columns["box_offsets"].astype(np.int64)
    return RecordStore(columns), metadata
