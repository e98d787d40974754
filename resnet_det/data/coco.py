"""Reading COCO-format detection data: COCO 2017 itself, the shapes set, and a user's own data.

The json is checked field by field before pycocotools indexes it, so a malformed file is a
one-line ``DatasetError`` naming the file, the record and the field, never a ``KeyError`` from
deep inside pycocotools. Category ids (COCO's run 1..90 with gaps) become contiguous labels 1..K
in category-id order; ``metadata["label_to_category_id"]`` maps them back for the detections
file. COCO boxes are ``[x, y, w, h]`` and become ``[x0, y0, x1, y1]``. Crowd regions are kept,
flagged ``iscrowd=1`` (the train loader drops them; COCOeval reads them from the json). An
annotation may carry ``"difficult": 1`` (not COCO's, ignored by pycocotools; ``convert.py`` writes
it so that VOC's flag survives a round trip through COCO).
A ``file_name`` is relative to the images folder and must stay inside it (no absolute paths, no
``..`` out of it); a json larger than ``$RESNET_DET_MAX_JSON_BYTES`` is refused unread.
"""

import contextlib
import io
import os
from collections import Counter
from pathlib import Path
from typing import List, Tuple

from pycocotools.coco import COCO

from resnet_det.data.sanitize import RecordSanitizer, is_number
from resnet_det.errors import DatasetError
from resnet_det.utils.file_io import read_json
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


def load_coco_json(
    annotations_json: os.PathLike, images_dir: os.PathLike, sanitizer: RecordSanitizer
) -> Tuple[List[dict], dict]:
    """Records and metadata of a COCO instances file whose ``file_name``s are under ``images_dir``."""
    path = Path(annotations_json)
    data = read_json(path, "annotation file", DatasetError)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: the top level is not an object; {_LAYOUT}")
    images = _check_items(data, "images", _IMAGE_FIELDS, path)
    categories = _check_items(data, "categories", _CATEGORY_FIELDS, path)
    annotations = _check_items(data, "annotations", _ANNOTATION_FIELDS, path, required=False)
    for key, items in (("images", images), ("categories", categories), ("annotations", annotations)):
        dup = next((i for i, n in Counter(item["id"] for item in items).items() if n > 1), None)
        if dup is not None:
            raise DatasetError(f"{path}: {key} id {dup} is used twice; give every entry of '{key}' a unique id")
    image_ids = {img["id"] for img in images}
    for ann in annotations:
        where = f"{path}: annotation {ann['id']}"
        if ann["image_id"] not in image_ids:
            raise DatasetError(f"{where} refers to image_id {ann['image_id']}, not in 'images'; fix or remove it")
        for flag in ("iscrowd", "difficult"):
            if ann.get(flag, 0) not in (0, 1):
                raise DatasetError(f"{where}: '{flag}' is {ann[flag]!r}, expected 0 or 1; fix it")

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()

    cat_ids = sorted(coco.getCatIds())
    label_of = {cat_id: label for label, cat_id in enumerate(cat_ids, start=1)}
    images_dir = os.path.abspath(images_dir)
    records = []
    for img in images:
        anns = []
        for ann in coco.imgToAnns[img["id"]]:
            if ann["category_id"] not in label_of:
                sanitizer.unknown_category(f"{path}: annotation {ann['id']} (image {img['id']})", ann["category_id"])
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            anns.append(
                {
                    "bbox": [x, y, x + w, y + h],
                    "label": label_of[ann["category_id"]],
                    "iscrowd": int(ann.get("iscrowd", 0)),
                    "difficult": int(ann.get("difficult", 0)),
                }
            )
        records.append(
            {
                "file_name": inside(images_dir, img["file_name"], f"{path}: image {img['id']}"),
                "image_id": img["id"],
                "height": img["height"],
                "width": img["width"],
                "annotations": anns,
            }
        )
    metadata = {
        "class_names": [coco.cats[c]["name"] for c in cat_ids],
        "label_to_category_id": {label: cat_id for cat_id, label in label_of.items()},
        "evaluator": "coco",
        "annotations_file": str(path.resolve()),
    }
    return records, metadata
