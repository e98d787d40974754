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
import os
from collections import Counter
from typing import Callable, Dict, Iterable, Iterator, Sequence, Union

import numpy as np

from resnet_det.config.defaults import DatasetsConfig
from resnet_det.config.validate import BAD_RECORD_CHOICES, check_bad_record_action
from resnet_det.data.records import RecordStore
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

    def unusable_image(self, kind: str, message: str) -> None:
        """An image a reader itself needs (YOLO's labels hold no image size) that is missing
        (``kind="missing_image"``) or undecodable (``"corrupt_image"``): counted, or stop."""
        self._bad(kind, "skipped", message, "put a readable image there or remove it from the list")

    def clean(self, records: Union[RecordStore, Iterable[dict]], num_classes: int, source: str) -> RecordStore:
        """The records that survive the policy, boxes clipped where allowed, as a new ``RecordStore``;
        ``source`` (the annotation file or the dataset name) starts every message.

        The checks run on the columns at once (a COCO-sized set in a second, not a minute of
        per-box Python); where several problems would stop, the one met first in record order,
        box order, does. Records from a loader (dicts) have their fields checked first.
        """
        store = records if isinstance(records, RecordStore) else RecordStore.from_records(_checked(records, source))
        columns, n = store.arrays, len(store)
        ids, offsets, bbox = columns["image_id"], columns["box_offsets"], columns["bbox"]
        owner = np.repeat(np.arange(n), np.diff(offsets))
        names = [store.file_name(i) for i in range(n)]

        order = np.argsort(ids, kind="stable")
        repeated = np.zeros(n, dtype=bool)
        repeated[order[1:]] = ids[order[1:]] == ids[order[:-1]]
        missing = np.fromiter((not os.path.isfile(name) for name in names), dtype=bool, count=n)

        width = columns["width"][owner].astype(np.float64)
        height = columns["height"][owner].astype(np.float64)
        x0, y0, x1, y1 = bbox.T
        with np.errstate(invalid="ignore"):
            no_area = ~np.isfinite(bbox).all(axis=1) | (x1 <= x0) | (y1 <= y0)
            t = _ROUNDING_TOLERANCE
            inside = ~no_area & (x0 >= -t) & (y0 >= -t) & (x1 <= width + t) & (y1 <= height + t)
        outside = ~no_area & ~inside
        clipped = np.stack(
            [np.clip(x0, 0, width), np.clip(y0, 0, height), np.clip(x1, 0, width), np.clip(y1, 0, height)], axis=1
        )
        entirely = outside & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
        live = ~missing[owner]
        label = columns["label"]
        bad_label = live & ((label < 1) | (label > num_classes))

        def where(j: int) -> str:
            i = int(owner[j])
            return f"{source}: image {int(ids[i])} ({names[i]}) box {j - int(offsets[i])}"

        def outside_message(j: int) -> str:
            i = int(owner[j])
            w, h = int(columns["width"][i]), int(columns["height"][i])
            return f"{where(j)} {_fmt(bbox[j])} is outside the {w}x{h} image"

        # What stops, if anything: the first problem in record order whose policy is to stop.
        fix = self.policy.boxes_outside == FIX
        stops = bad_label | (live & no_area & (self.policy.bad_boxes == STOP))
        stops |= live & outside & (self.policy.boxes_outside == STOP)
        candidates = []
        if repeated.any():
            candidates.append((int(np.argmax(repeated)), 0, -1))
        if missing.any() and self.policy.missing_image == STOP:
            candidates.append((int(np.argmax(missing)), 1, -1))
        if stops.any():
            j = int(np.argmax(stops))
            candidates.append((int(owner[j]), 2, j))
        if candidates:
            i, stage, j = min(candidates)
            if stage == 0:
                first = names[int(np.flatnonzero(ids == ids[i])[0])]
                raise DatasetError(
                    f"{source}: image id {int(ids[i])} is used twice ({first} and {names[i]}); "
                    "give every image a unique id"
                )
            if stage == 1:
                self._missing(f"{source}: image {int(ids[i])}: {names[i]} does not exist", 1)
            if bad_label[j]:
                raise DatasetError(f"{where(j)}: label {int(label[j])} is not in 1..{num_classes}; fix the loader")
            if no_area[j]:
                self._bad("bad_boxes", "skipped", f"{where(j)} {_fmt(bbox[j])}: no area", _FIX_ANNOTATION)
            self._bad("boxes_outside", "skipped", outside_message(j), "fix the annotation")

        if missing.any():
            i = int(np.argmax(missing))
            self._missing(f"{source}: image {int(ids[i])}: {names[i]} does not exist", int(missing.sum()))
        self._count(live & no_area, "bad_boxes", "skipped", lambda j: f"{where(j)} {_fmt(bbox[j])}: no area")
        if fix:
            self._count(live & entirely, "boxes_outside", "skipped", lambda j: f"{outside_message(j)} entirely")
            self._count(
                live & outside & ~entirely, "boxes_outside", "fixed", lambda j: f"{outside_message(j)} (clipped)"
            )
        else:
            self._count(live & outside, "boxes_outside", "skipped", outside_message)

        tolerant = np.stack(
            [np.maximum(x0, 0), np.maximum(y0, 0), np.minimum(x1, width), np.minimum(y1, height)], axis=1
        )
        keep = live & (inside | (fix & outside & ~entirely))
        cleaned = RecordStore({**columns, "bbox": np.where(inside[:, None], tolerant, clipped)})
        return cleaned.select(np.flatnonzero(~missing), keep)

    def _missing(self, first: str, n: int) -> None:
        self._bad("missing_image", "skipped", first, "put the image there or remove its record")
        self.report["missing_image skipped"] += n - 1

    def _count(self, mask: np.ndarray, kind: str, action: str, message: Callable[[int], str]) -> None:
        """Count the boxes of ``mask`` as ``kind action``, the first one's message the example."""
        if mask.any():
            self.report.add(kind, action, message(int(np.argmax(mask))))
            self.report[f"{kind} {action}"] += int(mask.sum()) - 1


_FIX_ANNOTATION = "fix or remove the annotation"


def _checked(records: Iterable[dict], source: str) -> Iterator[dict]:
    """``records`` from a loader, each checked against the "Dataset records" contract first."""
    for i, record in enumerate(records):
        _check_fields(record, i, source)
        for j, ann in enumerate(record["annotations"]):
            where = f"{source}: image {record['image_id']} ({record['file_name']}) box {j}"
            label, box = ann["label"], ann["bbox"]
            if not isinstance(label, int) or isinstance(label, bool):
                raise DatasetError(f"{where}: label {label!r} is not an integer class; fix the loader")
            if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(map(is_number, box)):
                raise DatasetError(f"{where}: bbox {box!r} is not 4 numbers; fix the loader")
            for flag in ("iscrowd", "difficult"):
                if ann[flag] not in (0, 1):
                    raise DatasetError(f"{where}: {flag} is {ann[flag]!r}, expected 0 or 1; fix the loader")
        yield record


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
