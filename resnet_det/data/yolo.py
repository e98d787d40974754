"""Reading YOLO txt labels: ``images/`` beside ``labels/``, one ``class cx cy w h`` line per box.

Coordinates are fractions of the image's width and height (0..1), class ids are 0-based indices
into the class names. The names come from an ultralytics ``data.yaml`` (``names`` as a list or an
``{id: name}`` mapping, ``path`` the data set's folder, relative to the yaml's own folder, and
``train``/``val``/``test`` each a folder of images, a list file, or a list of those) or from a
names file (one name per line). A list file holds one image path per line, relative to the
list's folder. An image's labels are ``<stem>.txt`` in the folder that has ``labels`` where the
image's path has its last ``images`` (ultralytics' rule), or beside the image when its path has
no ``images``; an image without a labels file has no boxes. A segmentation line (class and a
polygon) becomes the polygon's bounding box.

The labels do not hold the image size, so it is read from the image's header (or by decoding it):
a missing or undecodable image follows the ``missing_image`` / ``corrupt_image`` policy here.
Class ids beyond the names are ``unknown_category``; the doctor tells a 1-based id list apart.
Label ``k`` of the records is class id ``k - 1``; records' image ids are 1..N in list order.
"""

import logging
import math
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import yaml

from resnet_det.data.image_io import header_size
from resnet_det.data.sanitize import RecordSanitizer
from resnet_det.data.voc_style import IMAGE_SUFFIXES, read_names_file
from resnet_det.errors import DatasetError
from resnet_det.utils.safe_paths import inside

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def read_data_yaml(path: os.PathLike) -> dict:
    """An ultralytics ``data.yaml`` as a dict, with ``names`` checked and made a list."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DatasetError(f"cannot read the YOLO data file {path} ({str(e).splitlines()[0]}); fix 'classes'") from None
    if not isinstance(data, dict) or "names" not in data:
        raise DatasetError(f"{path}: no 'names' in it; an ultralytics data.yaml lists the class names under names:")
    names = data["names"]
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DatasetError(f"{path}: names ids are {sorted(names)}, expected 0..{len(names) - 1}; fix 'names'")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
        raise DatasetError(f"{path}: 'names' is not a list of class names; fix it")
    if "nc" in data and data["nc"] != len(names):
        raise DatasetError(f"{path}: nc is {data['nc']} but names lists {len(names)} classes; make them agree")
    return {**data, "names": [str(n) for n in names]}


def class_names_of(classes: os.PathLike) -> List[str]:
    """The class names of a ``data.yaml`` (by its suffix) or a names file."""
    if str(classes).endswith((".yaml", ".yml")):
        return read_data_yaml(classes)["names"]
    return read_names_file(classes, "'classes'")


def split_sources(data_yaml: os.PathLike, split: str) -> List[Path]:
    """The folders and list files that ``data.yaml`` gives for ``split``."""
    data_yaml = Path(data_yaml)
    data = read_data_yaml(data_yaml)
    if data.get(split) is None:
        given = [s for s in SPLITS if data.get(s) is not None]
        raise DatasetError(f"{data_yaml}: no '{split}' split in it (it has {', '.join(given) or 'none'}); fix 'split'")
    base = data_yaml.parent / str(data.get("path") or ".")
    sources = data[split] if isinstance(data[split], list) else [data[split]]
    return [base / str(s) for s in sources]


def list_images(source: Path) -> List[str]:
    """The images of a folder (recursively, sorted) or of a list file (one path a line)."""
    if source.is_dir():
        return sorted(str(p) for p in source.rglob("*") if p.suffix in IMAGE_SUFFIXES and p.is_file())
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read the images folder or list {source} ({e}); fix the path") from None
    return [
        inside(source.parent, line.strip(), f"{source}: line {n}")
        for n, line in enumerate(lines, start=1)
        if line.strip()
    ]


def label_path(image_path: str) -> Path:
    """ultralytics' rule: the last ``images`` of the path becomes ``labels``, the suffix ``.txt``."""
    parts = list(Path(image_path).parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def image_size(path: str) -> Optional[Tuple[int, int]]:
    """``(width, height)`` from the header, else by decoding; None when it cannot be decoded."""
    data = np.fromfile(path, dtype=np.uint8)
    size = header_size(data)
    if size is not None and size[0] > 0 and size[1] > 0:
        return size
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    return None if image is None else (image.shape[1], image.shape[0])


def _parse_line(line: str, where: str) -> Tuple[float, List[float]]:
    fields = line.split()
    try:
        values = [float(v) for v in fields]
    except ValueError:
        raise DatasetError(f"{where}: {line.strip()!r} is not numbers; a YOLO line is 'class cx cy w h'") from None
    if len(values) < 5 or (len(values) > 5 and len(values) % 2 == 0):
        raise DatasetError(
            f"{where}: {len(values)} numbers; a YOLO line is 'class cx cy w h' (or class x1 y1 x2 y2 ...)"
        )
    return values[0], values[1:]


def _box(coords: List[float], width: int, height: int) -> List[float]:
    if len(coords) == 4:
        cx, cy, w, h = coords
        return [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
    xs, ys = coords[0::2], coords[1::2]  # a segmentation polygon
    return [min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height]


def read_labels(path: Path, width: int, height: int, num_classes: int, sanitizer: RecordSanitizer) -> List[dict]:
    """The annotations of one labels file (none when it does not exist)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read the labels file {path} ({e}); fix or remove it") from None
    annotations = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}: line {n}"
        class_id, coords = _parse_line(line, where)
        if not (math.isfinite(class_id) and class_id.is_integer()):
            raise DatasetError(f"{where}: class {class_id:g} is not an integer id; fix the labels")
        if not 0 <= class_id < num_classes:
            sanitizer.unknown_category(where, int(class_id))
            continue
        annotations.append(
            {"bbox": _box(coords, width, height), "label": int(class_id) + 1, "iscrowd": 0, "difficult": 0}
        )
    return annotations


def load_yolo(
    sanitizer: RecordSanitizer,
    classes: os.PathLike,
    split: Optional[str] = None,
    images: Optional[os.PathLike] = None,
) -> Tuple[List[dict], dict]:
    """Records and metadata of a YOLO data set: ``classes`` a data.yaml with ``split``, or a
    names file with ``images`` (a folder or a list file)."""
    class_names = class_names_of(classes)
    sources: Sequence[Path] = split_sources(classes, split) if images is None else [Path(images)]
    files = [path for source in sources for path in list_images(source)]
    records = []
    for image_id, file_name in enumerate(files, start=1):
        if not os.path.isfile(file_name):
            sanitizer.unusable_image("missing_image", f"{file_name} does not exist")
            continue
        size = image_size(file_name)
        if size is None:
            sanitizer.unusable_image("corrupt_image", f"{file_name}: cannot be decoded (corrupt or truncated file)")
            continue
        width, height = size
        records.append(
            {
                "file_name": os.path.abspath(file_name),
                "image_id": image_id,
                "height": height,
                "width": width,
                "annotations": read_labels(label_path(file_name), width, height, len(class_names), sanitizer),
            }
        )
    metadata = {
        "class_names": class_names,
        "label_to_category_id": {i: i for i in range(1, len(class_names) + 1)},
        "evaluator": "coco",
        "format": "yolo",
    }
    return records, metadata
