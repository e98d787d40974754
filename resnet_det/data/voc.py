"""Reading PASCAL VOC detection data: ``VOCdevkit/VOC<year>/{ImageSets/Main, Annotations, JPEGImages}``.

Coordinates: VOC boxes are 1-based inclusive pixel indices; records use 0-based continuous
coordinates, so ``x0 = xmin - 1, y0 = ymin - 1, x1 = xmax, y1 = ymax`` (detectron2's convention:
a box covering pixels 1..10 spans [0, 10)). The VOC evaluator adds the 1 back.

Only direct ``<object>`` children of ``<annotation>`` and their direct ``<bndbox>`` are read, so the
``<part>`` boxes (head, hand, foot) nested in a person are ignored. ``difficult`` objects are kept,
flagged, for the evaluator; the train loader leaves them out unless ``datasets.use_difficult``.

Files are found by the ids of the image set (``<id>.xml``, ``<id>.jpg``), which must stay inside
``Annotations/`` and ``JPEGImages/``; the XML's ``<filename>`` is not used. The XML is parsed with
``defusedxml``: entity declarations (a "billion laughs" bomb) and external references are refused.
"""

import os
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence
from xml.parsers.expat import ErrorString

import defusedxml
import defusedxml.ElementTree

from resnet_det.data.sanitize import RecordSanitizer
from resnet_det.errors import DatasetError
from resnet_det.utils.safe_paths import inside

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def voc_image_id(voc_id: str) -> int:
    """The int image id of a VOC file id: ``"000005"`` -> 5, ``"2008_000123"`` -> 2008000123
    (distinct across VOC2007 and VOC2012); any other name gets a stable CRC32."""
    digits = voc_id.replace("_", "")
    return int(digits) if digits.isdigit() else zlib.crc32(voc_id.encode())


def _parse(xml_path: Path) -> ET.Element:
    """The root element; entity declarations and external references (an XML bomb, or a file
    that makes the parser read another) are refused before anything is expanded."""
    try:
        return defusedxml.ElementTree.parse(xml_path).getroot()
    except defusedxml.DefusedXmlException as e:
        raise DatasetError(
            f"{xml_path}: XML with entity declarations or external references ({type(e).__name__}) is "
            "refused, as such a file can expand to gigabytes or read other files; a VOC annotation needs "
            "none: remove its <!DOCTYPE ...> part"
        ) from None
    except ET.ParseError as e:
        (line, column), problem = e.position, ErrorString(e.code)
        raise DatasetError(
            f"{xml_path}: line {line} column {column + 1}: malformed XML ({problem}); fix or replace the file"
        ) from None
    except OSError as e:
        raise DatasetError(
            f"cannot read {xml_path} ({e.strerror}); every id in the image set needs its annotation file"
        ) from None
    except (ValueError, LookupError) as e:  # e.g. an encoding that expat does not know
        raise DatasetError(f"{xml_path}: not a readable XML file ({e}); fix or replace it") from None


def _number(parent: ET.Element, tag: str, where: str, default: Optional[float] = None) -> float:
    text = parent.findtext(tag)
    if text is None and default is not None:
        return default
    try:
        return float(text)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: <{tag}> is missing or not a number ({text!r}); fix the annotation") from None


def _flag(obj: ET.Element, tag: str, where: str) -> int:
    value = _number(obj, tag, where, default=0.0)
    if value not in (0.0, 1.0):
        raise DatasetError(f"{where}: <{tag}> is {value:g}, expected 0 or 1; fix the annotation")
    return int(value)


def object_names(xml_path: Path) -> List[str]:
    """The class names of the direct ``<object>``s of an annotation file, as written (stripped)."""
    return [(obj.findtext("name") or "").strip() for obj in _parse(xml_path).findall("object")]


def read_voc_annotation(
    xml_path: Path, image_path: str, voc_id: str, label_of: Dict[str, int], sanitizer: RecordSanitizer
) -> dict:
    """The record of one annotation file whose image is ``image_path``; label = ``label_of[name]``."""
    root = _parse(xml_path)
    size = root.find("size")
    if size is None:
        raise DatasetError(f"{xml_path}: no <size>; add <size><width>..</width><height>..</height></size>")
    width, height = (_number(size, tag, f"{xml_path}: <size>") for tag in ("width", "height"))
    if not (width.is_integer() and height.is_integer() and width > 0 and height > 0):
        raise DatasetError(f"{xml_path}: image size {width:g}x{height:g} is not a positive integer size; fix <size>")
    annotations = []
    for k, obj in enumerate(root.findall("object")):
        where = f"{xml_path}: object {k}"
        name = (obj.findtext("name") or "").strip()
        if name not in label_of:
            sanitizer.unknown_category(where, name)
            continue
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DatasetError(f"{where} ({name}) has no <bndbox>; add it or remove the object")
        xmin, ymin, xmax, ymax = (_number(bndbox, tag, f"{where} <bndbox>") for tag in ("xmin", "ymin", "xmax", "ymax"))
        annotations.append(
            {
                "bbox": [xmin - 1.0, ymin - 1.0, xmax, ymax],
                "label": label_of[name],
                "iscrowd": 0,
                "difficult": _flag(obj, "difficult", where),
                "truncated": _flag(obj, "truncated", where),
            }
        )
    return {
        "file_name": image_path,
        "image_id": voc_image_id(voc_id),
        "voc_id": voc_id,
        "height": int(height),
        "width": int(width),
        "annotations": annotations,
    }


def load_voc_split(
    voc_root: os.PathLike, image_set: str, sanitizer: RecordSanitizer, class_names: Sequence[str] = VOC_CLASSES
) -> List[dict]:
    """Records of the ids listed in ``<voc_root>/ImageSets/Main/<image_set>.txt``; label = class index + 1."""
    voc_root = Path(voc_root)
    ids_file = voc_root / "ImageSets" / "Main" / f"{image_set}.txt"
    try:
        lines = ids_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read the VOC image set {ids_file} ({e}); check the VOCdevkit folder") from None
    label_of = {name: i for i, name in enumerate(class_names, start=1)}
    return [
        _read_split_entry(voc_root, line.split()[0], label_of, sanitizer, f"{ids_file}: line {number}")
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]


def _read_split_entry(
    voc_root: Path, voc_id: str, label_of: Dict[str, int], sanitizer: RecordSanitizer, where: str
) -> dict:
    xml_path = Path(inside(voc_root / "Annotations", f"{voc_id}.xml", where))
    image_path = inside(voc_root / "JPEGImages", f"{voc_id}.jpg", where)
    return read_voc_annotation(xml_path, image_path, voc_id, label_of, sanitizer)
