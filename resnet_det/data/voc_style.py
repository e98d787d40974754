"""Reading a user's own PASCAL-VOC-style folder: VOC's XML with the user's classes.

The layout is VOC's, minus the year: ``<root>/Annotations/<id>.xml``, the images in
``<root>/JPEGImages/`` (or another folder) as ``<id>.<jpg|jpeg|png|bmp|...>``, and optional lists
``<root>/ImageSets/Main/<split>.txt``; without a split every XML in ``Annotations/`` is read.
The class list is a names file (one per line, label = line number), or, when none is given, the
names that every XML of ``Annotations/`` uses (of every split, so that the splits of one folder
share one list), sorted, with a one-line summary logged: so a typo in one file shows as an
extra class rather than as silently missing boxes (the data doctor flags names that differ only in
case or spacing). Boxes, ``difficult`` and ``truncated`` are read by ``voc.read_voc_annotation``,
exactly as for VOC itself, so the VOC metric applies.
"""

import logging
import os
from collections import Counter
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from resnet_det.data.sanitize import RecordSanitizer
from resnet_det.data.voc import object_names, read_voc_annotation
from resnet_det.errors import DatasetError
from resnet_det.utils.safe_paths import inside

logger = logging.getLogger(__name__)

# Image files looked for, in this order, as <id><suffix>.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".JPG", ".JPEG", ".PNG")


def read_names_file(path: os.PathLike, what: str) -> List[str]:
    """The class names of a names file: one per non-empty line, label = line order (1..K)."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read the class names file {path} ({e}); fix {what}") from None
    if not names:
        raise DatasetError(f"{path}: no class names in it; write one class name per line ({what})")
    duplicate = next((n for n, k in Counter(names).items() if k > 1), None)
    if duplicate is not None:
        raise DatasetError(f"{path}: class {duplicate!r} is listed twice; list every class once ({what})")
    return names


def find_image(images_dir: Path, voc_id: str, where: str) -> str:
    """``<images_dir>/<voc_id><suffix>`` for the first suffix that exists; ``.jpg`` when none does
    (the missing-image policy then decides)."""
    for suffix in IMAGE_SUFFIXES:
        path = inside(images_dir, f"{voc_id}{suffix}", where)
        if os.path.isfile(path):
            return path
    return inside(images_dir, f"{voc_id}.jpg", where)


def voc_style_ids(root: Path, split: Optional[str]) -> List[Tuple[str, str]]:
    """``(id, where)`` of the split's list, or of every ``Annotations/*.xml`` (sorted) without one."""
    if split is None:
        annotations = root / "Annotations"
        if not annotations.is_dir():
            raise DatasetError(f"{annotations} not found: a VOC-style folder holds Annotations/<id>.xml; fix 'root'")
        return [(p.stem, str(p)) for p in sorted(annotations.glob("*.xml"))]
    ids_file = root / "ImageSets" / "Main" / f"{split}.txt"
    try:
        lines = ids_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(
            f"cannot read the split list {ids_file} ({e}); fix 'split' or drop it to read every XML"
        ) from None
    return [(line.split()[0], f"{ids_file}: line {n}") for n, line in enumerate(lines, start=1) if line.strip()]


def load_voc_style(
    root: os.PathLike,
    sanitizer: RecordSanitizer,
    split: Optional[str] = None,
    classes: Optional[os.PathLike] = None,
    images: Optional[os.PathLike] = None,
) -> Tuple[List[dict], dict]:
    """Records and metadata (``class_names``, ``evaluator="voc"``) of a VOC-style folder."""
    root = Path(root)
    images_dir = Path(images) if images is not None else root / "JPEGImages"
    ids = voc_style_ids(root, split)
    xml_paths = [Path(inside(root / "Annotations", f"{voc_id}.xml", where)) for voc_id, where in ids]
    if classes is not None:
        class_names: Sequence[str] = read_names_file(classes, "'classes'")
    else:
        every_xml = [Path(where) for _, where in voc_style_ids(root, None)]  # all splits: the same list for each
        found = Counter(name for path in every_xml for name in object_names(path))
        class_names = sorted(found)
        if not class_names:
            raise DatasetError(f"{root}: no <object> in any annotation, so no classes; give a names file as 'classes'")
        logger.info(
            "%s: %d classes from the XML (boxes): %s",
            root,
            len(class_names),
            ", ".join(f"{n} ({found[n]})" for n in class_names),
        )
    label_of = {name: i for i, name in enumerate(class_names, start=1)}
    records = [
        read_voc_annotation(path, find_image(images_dir, voc_id, where), voc_id, label_of, sanitizer)
        for (voc_id, where), path in zip(ids, xml_paths)
    ]
    metadata = {
        "class_names": list(class_names),
        "label_to_category_id": {i: i for i in range(1, len(class_names) + 1)},
        "evaluator": "voc",
        "format": "voc",
        "voc_root": str(root.resolve()),
        "image_set": split,
    }
    return records, metadata
