"""PASCAL VOC devkit result files, read and written: ``comp4_det_test_<class>.txt``.

One file per class, one line per detection: ``<image id> <score> <xmin> <ymin> <xmax> <ymax>``,
with the devkit's own image ids (``000001``, ``2008_000123``) and its 1-based pixel coordinates
(a box on pixels 1..10 has xmin 1, xmax 10). Records use 0-based continuous coordinates
(``x0 = xmin - 1``, ``x1 = xmax``; see ``data/voc.py``), so reading subtracts 1 from xmin and ymin
and writing adds it back, as detectron2's ``PascalVOCDetectionEvaluator`` writes them. The
devkit and the evaluation server look for the files in ``results/VOC<year>/Main/``.
"""

import math
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

from resnet_det.errors import EvaluationError
from resnet_det.utils.file_io import atomic_write_text

RESULT_FILE = "comp4_det_test_{}.txt"
_PREFIX, _SUFFIX = RESULT_FILE.split("{}")


def _ids(records: Sequence[Mapping], split: str) -> Dict[str, int]:
    ids = {rec["voc_id"]: rec["image_id"] for rec in records if "voc_id" in rec}
    if not ids:
        raise EvaluationError(
            f"{split} is not a PASCAL VOC split (its records have no devkit ids): VOC result files need one"
        )
    return ids


def with_voc_image_ids(detections: Sequence[Mapping], records: Sequence[Mapping]) -> List[Dict]:
    """Detections whose ``image_id`` is a devkit id (``"000001"``) get the records' int id; others pass."""
    ids = {rec["voc_id"]: rec["image_id"] for rec in records if "voc_id" in rec}
    out = []
    for det in detections:
        image_id = det.get("image_id") if isinstance(det, Mapping) else None
        out.append({**det, "image_id": ids[image_id]} if isinstance(image_id, str) and image_id in ids else det)
    return out


def read_voc_results(folder: Path, records: Sequence[Mapping], metadata: Mapping) -> List[Dict]:
    """The detections of every ``comp4_det_test_<class>.txt`` in ``folder``, in COCO results format
    (the dataset's category ids, ``[x, y, w, h]`` in 0-based continuous coordinates)."""
    ids = _ids(records, metadata["name"])
    names = enumerate(metadata["class_names"], start=1)
    category_of = {name: int(metadata["label_to_category_id"][label]) for label, name in names}
    files = sorted(folder.glob(RESULT_FILE.format("*")))
    if not files:
        raise EvaluationError(f"{folder}: no {RESULT_FILE.format('<class>')} files (the devkit's per-class results)")
    detections = []
    for path in files:
        name = path.name[len(_PREFIX) : -len(_SUFFIX)]
        if name not in category_of:
            raise EvaluationError(f"{path}: '{name}' is not a class of {metadata['name']} ({', '.join(category_of)})")
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                detections.append(_parse_line(line, f"{path}:{number}", ids, category_of[name]))
    return detections


def _parse_line(line: str, where: str, ids: Mapping[str, int], category_id: int) -> Dict:
    fields = line.split()
    try:
        score, xmin, ymin, xmax, ymax = (float(v) for v in fields[1:])
        if len(fields) != 6 or not all(map(math.isfinite, (score, xmin, ymin, xmax, ymax))):
            raise ValueError
    except ValueError:
        raise EvaluationError(
            f"{where}: {line.strip()!r} is not '<image id> <score> <xmin> <ymin> <xmax> <ymax>'"
        ) from None
    if fields[0] not in ids:
        raise EvaluationError(
            f"{where}: image id {fields[0]!r} is not an image of the split (devkit ids such as {next(iter(ids))!r})"
        )
    return {
        "image_id": ids[fields[0]],
        "category_id": category_id,
        "bbox": [xmin - 1.0, ymin - 1.0, xmax - xmin + 1.0, ymax - ymin + 1.0],
        "score": score,
    }


def write_voc_results(
    detections: Sequence[Mapping], records: Sequence[Mapping], metadata: Mapping, folder: Path
) -> List[Path]:
    """One ``comp4_det_test_<class>.txt`` per class in ``folder`` (empty for a class without
    detections, as the devkit expects every file); returns their paths."""
    voc_id_of = {image_id: voc_id for voc_id, image_id in _ids(records, metadata["name"]).items()}
    names = enumerate(metadata["class_names"], start=1)
    class_of = {int(metadata["label_to_category_id"][label]): name for label, name in names}
    lines: Dict[str, List[str]] = {name: [] for name in class_of.values()}
    for det in sorted(detections, key=lambda d: (d["category_id"], d["image_id"], -d["score"])):
        x, y, w, h = det["bbox"]
        lines[class_of[det["category_id"]]].append(
            f"{voc_id_of[det['image_id']]} {det['score']:.6f} {x + 1:.3f} {y + 1:.3f} {x + w:.3f} {y + h:.3f}\n"
        )
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in lines.items():
        paths.append(folder / RESULT_FILE.format(name))
        atomic_write_text(paths[-1], "".join(text))
    return paths
