"""Writing records as a COCO json, a VOC-style folder or a YOLO txt data set (``tools/convert_data.py``).

A data set is read by the reader of its format (through the catalog, so the bad-record policies
apply), and its records are written in the layout the reader of the target format reads back:

- coco: ``images/`` and ``annotations.json`` (category id = label, 1..K; ``difficult`` kept as a
  non-COCO flag that pycocotools ignores);
- voc: ``Annotations/<id>.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt`` and
  ``classes.txt``; VOC's 1-based pixel indices are written as ``x0 + 1``, as numbers read back
  exactly (integers stay integers);
- yolo: ``images/<split>/``, ``labels/<split>/<stem>.txt`` and ``data.yaml``; the normalised
  centre and size are written with 6 decimals, so a box comes back within ``1e-6`` of the image's
  size (0.004 px on a 4000-pixel image).

What a target cannot express is counted in the returned notes: crowd regions (VOC and YOLO have
none) are left out, and YOLO has no ``difficult`` flag (those boxes become ordinary ones).
Images are hard-linked where possible, else copied, under their own file names (a data set whose
images share a name in different folders is refused: the VOC and YOLO layouts find files by name).
"""

import json
import os
import shutil
import xml.sax.saxutils
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import yaml

from resnet_det.errors import DatasetError
from resnet_det.utils.file_io import atomic_write_text

FORMATS = ("coco", "voc", "yolo")
YOLO_DECIMALS = 6


def _number(value: float) -> str:
    """A coordinate as text that reads back as the same float (integers without a decimal point)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _place_images(records: Sequence[dict], folder: Path) -> List[str]:
    """Link (or copy) every record's image into ``folder``; their new file names."""
    names = [os.path.basename(r["file_name"]) for r in records]
    twice = next((n for n, k in Counter(names).items() if k > 1), None)
    if twice is not None:
        raise DatasetError(f"two images are named {twice}; the converted layout finds images by name: rename one")
    folder.mkdir(parents=True, exist_ok=True)
    for record, name in zip(records, names):
        target = folder / name
        try:
            os.link(record["file_name"], target)
        except OSError:
            shutil.copy2(record["file_name"], target)
    return names


def write_coco(records: Sequence[dict], class_names: Sequence[str], out: Path, split: str) -> Counter:
    names = _place_images(records, out / "images")
    images, annotations = [], []
    for record, name in zip(records, names):
        images.append(
            {"id": record["image_id"], "file_name": name, "width": record["width"], "height": record["height"]}
        )
        for ann in record["annotations"]:
            x0, y0, x1, y1 = ann["bbox"]
            item = {
                "id": len(annotations) + 1,
                "image_id": record["image_id"],
                "category_id": ann["label"],
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": ann["iscrowd"],
            }
            if ann["difficult"]:
                item["difficult"] = 1
            annotations.append(item)
    categories = [{"id": i, "name": n} for i, n in enumerate(class_names, start=1)]
    data = {"images": images, "annotations": annotations, "categories": categories}
    atomic_write_text(out / "annotations.json", json.dumps(data, indent=1) + "\n")
    return Counter()


def _voc_xml(record: dict, name: str, class_names: Sequence[str]) -> str:
    esc = xml.sax.saxutils.escape
    objects = []
    for ann in record["annotations"]:
        x0, y0, x1, y1 = ann["bbox"]
        box = "".join(
            f"<{tag}>{_number(v)}</{tag}>" for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (x0 + 1, y0 + 1, x1, y1))
        )
        objects.append(
            f"  <object><name>{esc(class_names[ann['label'] - 1])}</name><truncated>{int(ann.get('truncated', 0))}"
            f"</truncated><difficult>{int(ann['difficult'])}</difficult><bndbox>{box}</bndbox></object>\n"
        )
    size = f"<size><width>{record['width']}</width><height>{record['height']}</height><depth>3</depth></size>"
    return f"<annotation>\n  <filename>{esc(name)}</filename>\n  {size}\n{''.join(objects)}</annotation>\n"


def write_voc(records: Sequence[dict], class_names: Sequence[str], out: Path, split: str) -> Counter:
    notes: Counter = Counter()
    names = _place_images(records, out / "JPEGImages")
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    for record, name in zip(records, names):
        kept = [a for a in record["annotations"] if not a["iscrowd"]]
        notes["crowd regions left out (VOC has none)"] += len(record["annotations"]) - len(kept)
        xml_text = _voc_xml({**record, "annotations": kept}, name, class_names)
        atomic_write_text(out / "Annotations" / f"{Path(name).stem}.xml", xml_text)
    ids = "".join(f"{Path(n).stem}\n" for n in names)
    atomic_write_text(out / "ImageSets" / "Main" / f"{split}.txt", ids)
    atomic_write_text(out / "classes.txt", "".join(f"{n}\n" for n in class_names))
    return notes


def write_yolo(records: Sequence[dict], class_names: Sequence[str], out: Path, split: str) -> Counter:
    notes: Counter = Counter()
    names = _place_images(records, out / "images" / split)
    labels = out / "labels" / split
    labels.mkdir(parents=True, exist_ok=True)
    d = YOLO_DECIMALS
    for record, name in zip(records, names):
        w, h = record["width"], record["height"]
        lines = []
        for ann in record["annotations"]:
            if ann["iscrowd"]:
                notes["crowd regions left out (YOLO has none)"] += 1
                continue
            notes["difficult flags lost (YOLO has none; kept as boxes)"] += ann["difficult"]
            x0, y0, x1, y1 = ann["bbox"]
            cx, cy, bw, bh = (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h
            lines.append(f"{ann['label'] - 1} {cx:.{d}f} {cy:.{d}f} {bw:.{d}f} {bh:.{d}f}\n")
        atomic_write_text(labels / f"{Path(name).stem}.txt", "".join(lines))
    data = {"path": ".", split: f"images/{split}", "names": dict(enumerate(class_names))}
    atomic_write_text(out / "data.yaml", yaml.safe_dump(data, sort_keys=False))
    return notes


WRITERS: Dict[str, Callable[[Sequence[dict], Sequence[str], Path, str], Counter]] = {
    "coco": write_coco,
    "voc": write_voc,
    "yolo": write_yolo,
}


def convert_records(
    records: Sequence[dict], class_names: Sequence[str], fmt: str, out: os.PathLike, split: str
) -> Counter:
    """Write ``records`` in format ``fmt`` into the new or empty folder ``out``; returns what the
    target format could not hold (``{note: count}``)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} exists and is not an empty folder; choose a new output folder")
    out.mkdir(parents=True, exist_ok=True)
    return +WRITERS[fmt](records, class_names, out, split)
