"""Reading COCO-format detection data: COCO 2017 itself, the shapes set, and a user's own data.

The json is checked field by field, so a malformed file is a one-line ``DatasetError`` naming the
file, the record and the field, never a ``KeyError``; pycocotools stays the reference for what the
file means (evaluation reads the ground truth with it), and the records list each image's boxes
in its order. Polygons are dropped before the file is parsed (no box detector needs them), and it
is parsed with ``orjson``: COCO train2017 loads in a few seconds and well under 1.5 GB. Category ids (COCO's run 1..90 with gaps) become contiguous labels 1..K
in category-id order; ``metadata["label_to_category_id"]`` maps them back for the detections
file. COCO boxes are ``[x, y, w, h]`` and become ``[x0, y0, x1, y1]``. Crowd regions are kept,
flagged ``iscrowd=1`` (the train loader drops them; COCOeval reads them from the json).
A ``file_name`` is relative to the images folder and must stay inside it (no absolute paths, no
``..`` out of it); a json larger than ``$RESNET_DET_MAX_JSON_BYTES`` is refused unread.
"""

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

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


# What no box detector needs, cut out of the file's bytes before it is parsed: polygon
# segmentations (lists of lists of numbers: most of a COCO file), areas, and the images' URLs and
# dates. A key token followed by ':' only occurs as a key (quotes inside strings are escaped), and
# each value pattern stops where the value does (at the ',' or '}' that follows it); a value of
# another form (an RLE segmentation object, an escaped string) is left to the parser.
_UNUSED_VALUE = (
    rb'"(?:segmentation"\s*:\s*\[[-+0-9.eE,\s\[\]]*\]'
    rb'|area"\s*:\s*[-+0-9.eE]+'
    rb'|(?:coco_url|flickr_url|date_captured)"\s*:\s*"[^"\\]*")'
)
# With the comma before it; or, first in its object, with those that follow it and the comma after.
_UNUSED = re.compile(
    rb",\s*" + _UNUSED_VALUE + rb"|(?<=\{)\s*" + _UNUSED_VALUE + rb"(?:\s*,\s*" + _UNUSED_VALUE + rb")*\s*,?"
)


def _read_without_polygons(path: Path) -> Any:
    """The parsed JSON of a COCO file, ``_UNUSED`` cut out of it first: the polygons are most of a
    COCO file, and parsed they would be most of the memory of loading it."""
    check_json_size(path, DatasetError)
    try:
        raw = path.read_bytes()
    except OSError:
        return read_json(path, "annotation file", DatasetError)  # its one-line error
    stripped = _UNUSED.sub(b"", raw)
    del raw
    try:
        return orjson.loads(stripped)
    except orjson.JSONDecodeError:
        del stripped
        return read_json(path, "annotation file", DatasetError)  # the error at the file's own line/column


def read_coco_json(
    annotations_json: os.PathLike, images_dir: os.PathLike, sanitizer: RecordSanitizer
) -> Tuple[Iterator[dict], dict]:
    """``(records, metadata)`` of a COCO instances file whose ``file_name``s are under ``images_dir``;
    ``records`` is a generator, so that they can be compacted as they come and the parsed file is
    released once they are all made."""
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
    anns_of: Dict[int, list] = {img["id"]: [] for img in images}
    for ann in annotations:
        in_image = anns_of.get(ann["image_id"])
        if in_image is None:
            raise DatasetError(
                f"{path}: annotation {ann['id']} refers to image_id {ann['image_id']}, not in 'images'; fix or remove it"
            )
        if ann.get("iscrowd", 0) not in (0, 1):
            raise DatasetError(
                f"{path}: annotation {ann['id']}: 'iscrowd' is {ann['iscrowd']!r}, expected 0 or 1; fix it"
            )
        in_image.append(ann)
    del annotations

    cat_ids = sorted({cat["id"] for cat in categories})
    label_of = {cat_id: label for label, cat_id in enumerate(cat_ids, start=1)}
    name_of = {cat["id"]: cat["name"] for cat in categories}
    metadata = {
        "class_names": [name_of[c] for c in cat_ids],
        "label_to_category_id": {label: cat_id for cat_id, label in label_of.items()},
        "evaluator": "coco",
        "annotations_file": str(path.resolve()),
    }
    return _records(path, os.path.abspath(images_dir), images, anns_of, label_of, sanitizer), metadata


def _records(path: Path, images_dir: str, images: list, anns_of: dict, label_of: dict, sanitizer) -> Iterator[dict]:
    # pycocotools' order: an image's annotations in file order (COCO.imgToAnns).
    for img in images:
        anns = []
        for ann in anns_of.pop(img["id"]):
            label = label_of.get(ann["category_id"])
            if label is None:
                sanitizer.unknown_category(f"{path}: annotation {ann['id']} (image {img['id']})", ann["category_id"])
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            anns.append(
                {"bbox": [x, y, x + w, y + h], "label": label, "iscrowd": int(ann.get("iscrowd", 0)), "difficult": 0}
            )
        yield {
            "file_name": inside(images_dir, img["file_name"], f"{path}: image {img['id']}"),
            "image_id": img["id"],
            "height": img["height"],
            "width": img["width"],
            "annotations": anns,
        }


def load_coco_json(
    annotations_json: os.PathLike, images_dir: os.PathLike, sanitizer: RecordSanitizer
) -> Tuple[RecordStore, dict]:
    """``read_coco_json`` with its records compacted into a ``RecordStore``."""
    records, metadata = read_coco_json(annotations_json, images_dir, sanitizer)
    return RecordStore.from_records(records), metadata
