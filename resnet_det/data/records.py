"""Dataset records in a compact, columnar form that DataLoader workers share without copying them.

A list of record dicts is millions of Python objects (COCO train2017: 117k images, 860k boxes),
and reading one touches its reference counts, so every page that holds them is copied into each
worker process over an epoch (pytorch#13246, the DataLoader "memory leak" of detectron2#887 and
mmdetection#6931). A ``RecordStore`` keeps the same records in a dozen numpy arrays: reading a
record builds a fresh dict from them and writes nothing, so the pages stay shared with the parent
(forked workers) or with the page cache (arrays memory-mapped from ``records_cache``).

Columns, N images and M boxes: ``image_id`` (int64), ``height``, ``width`` (int32), the UTF-8
file names in ``names`` cut by ``name_offsets`` (N+1), the boxes of image ``i`` at rows
``box_offsets[i]:box_offsets[i+1]`` of ``bbox`` (M x 4 float64, exact), ``label`` (int32),
``iscrowd`` and ``difficult`` (uint8). Any other key of a record or of its annotations (VOC's
``voc_id``, ``truncated``) is kept as JSON in ``extras``, cut by ``extra_offsets``.
"""

from array import array
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union, overload

import numpy as np
import orjson

from resnet_det.errors import DatasetError

__all__ = ["RecordStore", "as_record_store"]

_RECORD_KEYS = ("file_name", "image_id", "height", "width", "annotations")
_BOX_KEYS = ("bbox", "label", "iscrowd", "difficult")
_ANNOTATION_EXTRAS = "annotation_extras"  # in ``extras``: the other keys of each box, a list

COLUMNS = {
    "image_id": np.int64,
    "height": np.int32,
    "width": np.int32,
    "name_offsets": np.int64,
    "names": np.uint8,
    "box_offsets": np.int64,
    "bbox": np.float64,
    "label": np.int32,
    "iscrowd": np.uint8,
    "difficult": np.uint8,
    "extra_offsets": np.int64,
    "extras": np.uint8,
}


class _Builder:
    """Appends record dicts into flat typed arrays (8 bytes a number, not a Python object each)."""

    def __init__(self):
        self.image_id, self.height, self.width = array("q"), array("i"), array("i")
        self.names, self.name_offsets = bytearray(), array("q", [0])
        self.bbox, self.label, self.flags = array("d"), array("i"), bytearray()
        self.box_offsets = array("q", [0])
        self.extras, self.extra_offsets = bytearray(), array("q", [0])

    def append(self, record: Mapping) -> None:
        self.image_id.append(record["image_id"])
        self.height.append(record["height"])
        self.width.append(record["width"])
        self.names += record["file_name"].encode("utf-8")
        self.name_offsets.append(len(self.names))
        annotations = record["annotations"]
        extra = {k: v for k, v in record.items() if k not in _RECORD_KEYS}
        box_extras = []
        for ann in annotations:
            self.bbox.extend(ann["bbox"])
            self.label.append(ann["label"])
            self.flags += bytes((ann["iscrowd"], ann["difficult"]))
            if len(ann) > 4:
                box_extras.append({k: v for k, v in ann.items() if k not in _BOX_KEYS})
        if box_extras:
            if len(box_extras) != len(annotations):
                box_extras = [{k: v for k, v in ann.items() if k not in _BOX_KEYS} for ann in annotations]
            extra[_ANNOTATION_EXTRAS] = box_extras
        self.box_offsets.append(len(self.label))
        if extra:
            try:
                self.extras += orjson.dumps(extra)
            except TypeError as e:
                raise DatasetError(
                    f"record of {record['file_name']}: a field is not JSON-serializable ({e}); "
                    "give records only numbers, strings, lists and dicts"
                ) from None
        self.extra_offsets.append(len(self.extras))

    def build(self) -> "RecordStore":
        flags = np.frombuffer(bytes(self.flags), dtype=np.uint8).reshape(-1, 2)
        return RecordStore(
            {
                "image_id": np.frombuffer(self.image_id, dtype=np.int64).copy(),
                "height": np.frombuffer(self.height, dtype=np.int32).copy(),
                "width": np.frombuffer(self.width, dtype=np.int32).copy(),
                "name_offsets": np.frombuffer(self.name_offsets, dtype=np.int64).copy(),
                "names": np.frombuffer(bytes(self.names), dtype=np.uint8).copy(),
                "box_offsets": np.frombuffer(self.box_offsets, dtype=np.int64).copy(),
                "bbox": np.frombuffer(self.bbox, dtype=np.float64).reshape(-1, 4).copy(),
                "label": np.frombuffer(self.label, dtype=np.int32).copy(),
                "iscrowd": flags[:, 0].copy(),
                "difficult": flags[:, 1].copy(),
                "extra_offsets": np.frombuffer(self.extra_offsets, dtype=np.int64).copy(),
                "extras": np.frombuffer(bytes(self.extras), dtype=np.uint8).copy(),
            }
        )


class RecordStore(Sequence):
    """The records of a dataset as columns; ``store[i]`` is record ``i`` as a new dict, exactly as
    the loader made it (see docs/architecture.md, "Dataset records")."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        missing = sorted(set(COLUMNS) - set(arrays))
        if missing:
            raise DatasetError(f"record columns {missing} are missing")
        self.arrays: Dict[str, np.ndarray] = dict(arrays)
        for name, value in self.arrays.items():
            setattr(self, "_" + name, value)

    @classmethod
    def from_records(cls, records: Iterable[Mapping]) -> "RecordStore":
        """Compact ``records`` (any iterable of record dicts: a generator is never held whole)."""
        builder = _Builder()
        for record in records:
            builder.append(record)
        return builder.build()

    @classmethod
    def concat(cls, stores: Sequence["RecordStore"]) -> "RecordStore":
        """One store of the records of ``stores``, in order."""
        out = {}
        for name in COLUMNS:
            parts = [s.arrays[name] for s in stores]
            if name.endswith("_offsets"):
                starts = np.cumsum([0] + [int(p[-1]) for p in parts[:-1]])
                parts = [parts[0]] + [p[1:] + start for p, start in zip(parts[1:], starts[1:])]
            out[name] = np.concatenate(parts)
        return cls(out)

    def __len__(self) -> int:
        return len(self._image_id)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def _index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record {i} out of range (0..{n - 1})")
        return i + n if i < 0 else i

    def file_name(self, i: int) -> str:
        i = self._index(i)
        return self._names[self._name_offsets[i] : self._name_offsets[i + 1]].tobytes().decode("utf-8")

    def image_id(self, i: int) -> int:
        return int(self._image_id[self._index(i)])

    def image_size(self, i: int) -> Tuple[int, int]:
        """``(height, width)`` of record ``i`` as annotated."""
        i = self._index(i)
        return int(self._height[i]), int(self._width[i])

    def boxes(self, i: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Read-only views of image ``i``'s ``bbox`` (k x 4), ``label``, ``iscrowd``, ``difficult``."""
        i = self._index(i)
        s = slice(self._box_offsets[i], self._box_offsets[i + 1])
        return self._bbox[s], self._label[s], self._iscrowd[s], self._difficult[s]

    def _extra(self, i: int) -> dict:
        start, end = self._extra_offsets[i], self._extra_offsets[i + 1]
        return orjson.loads(self._extras[start:end].tobytes()) if end > start else {}

    @overload
    def __getitem__(self, i: int) -> dict: ...
    @overload
    def __getitem__(self, i: slice) -> List[dict]: ...
    def __getitem__(self, i: Union[int, slice]):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = self._index(int(i))
        bbox, label, iscrowd, difficult = self.boxes(i)
        extra = self._extra(i)
        box_extras = extra.pop(_ANNOTATION_EXTRAS, None) or [{}] * len(label)
        annotations = [
            {"bbox": b, "label": lab, "iscrowd": c, "difficult": d, **e}
            for b, lab, c, d, e in zip(bbox.tolist(), label.tolist(), iscrowd.tolist(), difficult.tolist(), box_extras)
        ]
        height, width = self.image_size(i)
        record = {"file_name": self.file_name(i), "image_id": int(self._image_id[i]), "height": height}
        record.update(width=width, annotations=annotations, **extra)
        return record

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:
        if isinstance(other, RecordStore):
            return len(self) == len(other) and all(np.array_equal(self.arrays[k], other.arrays[k]) for k in COLUMNS)
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RecordStore({len(self)} images, {len(self._label)} boxes, {self.nbytes / 2**20:.1f} MB)"

    def select(self, images: np.ndarray, keep_boxes: Optional[np.ndarray] = None) -> "RecordStore":
        """A new store of the records ``images`` (indices, in that order), keeping only the boxes
        where ``keep_boxes`` (a bool per box of this store) is true."""
        images = np.asarray(images, dtype=np.int64)
        keep = np.ones(len(self._label), dtype=bool) if keep_boxes is None else np.asarray(keep_boxes, dtype=bool)
        kept_before = np.concatenate([[0], np.cumsum(keep)])  # kept boxes before each box row
        starts, ends = self._box_offsets[images], self._box_offsets[images + 1]
        counts = kept_before[ends] - kept_before[starts]
        rows = _ranges(starts, ends)
        rows = rows[keep[rows]]
        out = {
            "image_id": self._image_id[images],
            "height": self._height[images],
            "width": self._width[images],
            "box_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        }
        for name in ("bbox", "label", "iscrowd", "difficult"):
            out[name] = self.arrays[name][rows]
        out["names"], out["name_offsets"] = _gather(self._names, self._name_offsets, images)
        extras = [self._extras[self._extra_offsets[i] : self._extra_offsets[i + 1]].tobytes() for i in images.tolist()]
        if keep_boxes is not None:
            extras = [self._filter_box_extras(blob, keep[s:e]) for blob, s, e in zip(extras, starts, ends)]
        out["extras"] = np.frombuffer(b"".join(extras), dtype=np.uint8).copy()
        out["extra_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in extras])]).astype(np.int64)
        return RecordStore(out)

    @staticmethod
    def _filter_box_extras(blob: bytes, keep: np.ndarray) -> bytes:
        if not blob or keep.all():
            return blob
        extra = orjson.loads(blob)
        if _ANNOTATION_EXTRAS in extra:
            extra[_ANNOTATION_EXTRAS] = [e for e, k in zip(extra[_ANNOTATION_EXTRAS], keep) if k]
        return orjson.dumps(extra)


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The concatenation of ``range(s, e)`` for each pair, without a Python loop."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(total, dtype=np.int64) + offsets


def _gather(buffer: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The byte strings ``rows`` of a buffer cut by ``offsets``, as a new buffer and offsets."""
    starts, ends = offsets[rows], offsets[rows + 1]
    new_offsets = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
    return buffer[_ranges(starts, ends)], new_offsets


def as_record_store(records: Union[RecordStore, Iterable[Mapping]]) -> RecordStore:
    """``records`` as a ``RecordStore`` (compacted if a list or another iterable of dicts)."""
    return records if isinstance(records, RecordStore) else RecordStore.from_records(records)
