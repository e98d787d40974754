"""Bad-record policies: fix a bad record (and count it), skip it (and count it), or stop.

Large real datasets almost always hold a few broken annotations. Stopping on the first one makes a
week-long download useless; silently dropping them hides a wrong dataset. So every kind of problem
has a policy in ``cfg.datasets`` (``bad_boxes``, ``boxes_outside``, ``unknown_category``,
``missing_image``, ``corrupt_image``), and whatever was fixed or skipped is counted in a
``SanitizeReport`` (a dict of counts) that ``get_dataset`` returns in
``metadata["sanitize_counts"]``: the trainer prints its ``summary()`` once and saves its
``to_dict()`` (counts and the first example of each) as ``data_report.json``. Undecodable images
are only known once read: the training loader flags them, and the trainer adds them at the end.

Problems no policy can repair (duplicate image ids, missing fields, malformed files) always stop.
"""

import dataclasses
import math
import os
from collections import Counter
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

from resnet_det.config.defaults import DatasetsConfig
from resnet_det.config.validate import BAD_RECORD_CHOICES, check_bad_record_action
from resnet_det.errors import DatasetError

FIX, SKIP, STOP = "fix", "skip", "stop"

# Pixels by which a box may overshoot its image without counting as outside: the rounding noise of
# [x, y, w, h] written with a few decimals (x + w can exceed the width by 0.01). Clipped silently.
_ROUNDING_TOLERANCE = 0.02

# How each kind reads in a summary line.
_DESCRIPTIONS = {
    "bad_boxes": "boxes with zero/negative size or non-finite coordinates",
    "boxes_outside": "boxes outside the image",
    "unknown_category": "boxes of unknown categories",
    "missing_image": "missing images",
    "corrupt_image": "undecodable (corrupt) images",
}


@dataclasses.dataclass(frozen=True)
class BadRecordPolicy:
    """The action for each kind of bad record; build it with ``from_config(cfg.datasets)``."""

    bad_boxes: str
    boxes_outside: str
    unknown_category: str
    missing_image: str
    corrupt_image: str

    def __post_init__(self):
        for kind in BAD_RECORD_CHOICES:
            check_bad_record_action(kind, getattr(self, kind))

    @classmethod
    def from_config(cls, datasets_cfg) -> "BadRecordPolicy":
        """Read the five policy keys from ``cfg.datasets`` (a DictConfig or a ``DatasetsConfig``)."""
        return cls(**{f.name: getattr(datasets_cfg, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def default(cls) -> "BadRecordPolicy":
        """The schema's defaults (``resnet_det.config.defaults.DatasetsConfig``)."""
        return cls.from_config(DatasetsConfig())


class SanitizeReport(Counter):
    """What the policies fixed and skipped: counts keyed ``"<kind> <fixed|skipped>"`` (the kind is
    the ``cfg.datasets`` key, e.g. ``"bad_boxes skipped"``), so that it is a plain dict for
    ``json.dumps``; ``examples`` holds the first message of each key."""

    def __init__(self):
        super().__init__()
        self.examples: Dict[str, str] = {}

    @classmethod
    def from_dict(cls, data: dict) -> "SanitizeReport":
        """The report that ``to_dict`` wrote (as the records cache keeps it)."""
        report = cls()
        report.update(data["counts"])
        report.examples.update(data["examples"])
        return report

    def add(self, kind: str, action: str, example: str) -> None:
        key = f"{kind} {action}"
        self[key] += 1
        self.examples.setdefault(key, example)

    def add_undecodable(self, files: Sequence[str]) -> None:
        """Count images skipped as undecodable (``corrupt_image``), known only once read."""
        for name in files:
            self.add("corrupt_image", "skipped", f"{name}: cannot be decoded (corrupt or truncated file)")

    def merge(self, other: "SanitizeReport") -> None:
        self.update(other)
        for key, example in other.examples.items():
            self.examples.setdefault(key, example)

    def summary(self) -> str:
        """One line, e.g. ``fixed: 3 boxes outside the image; skipped: 2 missing images``."""
        parts = []
        for action in ("fixed", "skipped"):
            items = [f"{n} {_DESCRIPTIONS[key.split()[0]]}" for key, n in sorted(self.items()) if key.endswith(action)]
            if items:
                parts.append(f"{action}: {', '.join(items)}")
        return "; ".join(parts) or "no bad records"

    def to_dict(self) -> dict:
        """JSON-ready, for ``data_report.json``: ``{"counts": {key: n}, "examples": {key: message}}``."""
        return {"counts": dict(sorted(self.items())), "examples": dict(sorted(self.examples.items()))}


def is_number(x) -> bool:
    """An int or float (a JSON number), not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class RecordSanitizer:
    """Applies a ``BadRecordPolicy`` to the records of one dataset and counts what it did.

    Readers call ``unknown_category`` while mapping categories (only they know the original
    category); ``clean`` then checks what every reader's records share: unique image ids, the
    required fields, image files that exist, and boxes that have an area and lie in the image.
    """

    def __init__(self, policy: BadRecordPolicy):
        self.policy = policy
        self.report = SanitizeReport()

    def _bad(self, kind: str, action: str, message: str, fix_hint: str) -> None:
        if getattr(self.policy, kind) == STOP:
            raise DatasetError(f"{message}; {fix_hint}, or set datasets.{kind}={BAD_RECORD_CHOICES[kind][0][0]}")
        self.report.add(kind, action, message)

    def unknown_category(self, where: str, category) -> None:
        """A box whose category is not among the dataset's categories (``where`` names the file
        and the record): counted, or stop."""
        self._bad(
            "unknown_category",
            "skipped",
            f"{where}: category {category!r} is not a known category",
            "fix the annotation or add the category",
        )

    def clean(self, records: Iterable[dict], num_classes: int, source: str) -> List[dict]:
        """The records that survive the policy, boxes clipped where allowed (new dicts);
        ``source`` (the annotation file or the dataset name) starts every message."""
        return list(self.iter_clean(records, num_classes, source))

    def iter_clean(self, records: Iterable[dict], num_classes: int, source: str) -> Iterator[dict]:
        """``clean`` one record at a time, for a ``RecordStore`` to compact as they come."""
        seen: Dict[int, str] = {}
        for i, record in enumerate(records):
            _check_fields(record, i, source)
            image_id, file_name = record["image_id"], record["file_name"]
            if image_id in seen:
                raise DatasetError(
                    f"{source}: image id {image_id} is used twice ({seen[image_id]} and {file_name}); "
                    "give every image a unique id"
                )
            seen[image_id] = file_name
            if not os.path.isfile(file_name):
                self._bad(
                    "missing_image",
                    "skipped",
                    f"{source}: image {image_id}: {file_name} does not exist",
                    "put the image there or remove its record",
                )
                continue
            annotations = []
            for j, ann in enumerate(record["annotations"]):
                box = self._clean_box(ann, f"{source}: image {image_id} ({file_name}) box {j}", record, num_classes)
                if box is not None:
                    annotations.append({**ann, "bbox": box})
            yield {**record, "annotations": annotations}

    def _clean_box(self, ann: dict, where: str, record: dict, num_classes: int) -> Optional[List[float]]:
        label = ann["label"]
        if not isinstance(label, int) or isinstance(label, bool) or not 1 <= label <= num_classes:
            raise DatasetError(f"{where}: label {label!r} is not in 1..{num_classes}; fix the loader")
        box = ann["bbox"]
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(map(is_number, box)):
            raise DatasetError(f"{where}: bbox {box!r} is not 4 numbers; fix the loader")
        x0, y0, x1, y1 = (float(v) for v in box)
        if not all(map(math.isfinite, (x0, y0, x1, y1))) or x1 <= x0 or y1 <= y0:
            self._bad("bad_boxes", "skipped", f"{where} {_fmt(box)}: no area", "fix or remove the annotation")
            return None
        w, h = record["width"], record["height"]
        t = _ROUNDING_TOLERANCE
        if x0 >= -t and y0 >= -t and x1 <= w + t and y1 <= h + t:
            return [max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))]
        message = f"{where} {_fmt(box)} is outside the {w}x{h} image"
        if self.policy.boxes_outside != FIX:
            self._bad("boxes_outside", "skipped", message, "fix the annotation")
            return None
        clipped = [min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h)]
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            self.report.add("boxes_outside", "skipped", f"{message} entirely")
            return None
        self.report.add("boxes_outside", "fixed", f"{message} (clipped)")
        return clipped


_RECORD_FIELDS = {"file_name": str, "image_id": int, "height": int, "width": int, "annotations": list}
_ANNOTATION_FIELDS = ("bbox", "label", "iscrowd", "difficult")


def _check_fields(record: dict, index: int, source: str) -> None:
    """The "Dataset records" contract (docs/architecture.md), for loaders written by users too."""
    if not isinstance(record, dict):
        raise DatasetError(f"{source}: record {index} is a {type(record).__name__}, not a dict; fix the loader")
    for name, kind in _RECORD_FIELDS.items():
        value = record.get(name)
        valid = isinstance(value, kind) and not isinstance(value, bool)
        if valid and name in ("height", "width"):
            valid = value > 0
        if not valid:
            raise DatasetError(
                f"{source}: record {index} ({record.get('file_name', '?')}): field '{name}' is missing or not a "
                f"valid {kind.__name__} ({value!r}); fix the loader"
            )
    for j, ann in enumerate(record["annotations"]):
        missing = [f for f in _ANNOTATION_FIELDS if not isinstance(ann, dict) or f not in ann]
        if missing:
            raise DatasetError(
                f"{source}: record {index} ({record['file_name']}) annotation {j} has no {', '.join(missing)}; "
                "fix the loader"
            )


def _fmt(box: Sequence) -> str:
    return "[" + ", ".join(f"{float(v):.6g}" for v in box) + "]"
