"""Parse a dataset once per machine and once per run: its records cached in a memory-mapped file.

The cache of a dataset is one file in ``$RESNET_DET_CACHE/records/`` (default
``~/.cache/resnet_det``; ``RESNET_DET_CACHE=none`` turns it off): a JSON header, then the
``RecordStore`` columns, each read in place with ``np.frombuffer`` over a read-only ``mmap``.
Every process of a machine that opens it shares the same page-cache pages, and so do their
loader workers. The file's name says which dataset, files and bad-record policy it is for; its
header holds the content hash of the dataset's files (the annotation file's bytes, its images
folder's modification time) and a checksum of the columns. A cache of other contents (stale) or
one that does not check out (corrupt, truncated) is rebuilt, with a warning. Writes are atomic.

Under ``torchrun`` one process per node builds, the others read: rank 0 first, then the
``LOCAL_RANK`` 0 of every other node (which finds rank 0's file if the cache folder is shared,
else builds its own), then everyone else, each step closed by a collective that also carries any
error to every rank, so no rank is left waiting on one that failed.
"""

import dataclasses
import hashlib
import logging
import mmap
import os
import re
import struct
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import orjson

from resnet_det.data.records import COLUMNS, RecordStore
from resnet_det.data.sanitize import BadRecordPolicy, SanitizeReport
from resnet_det.errors import DatasetError, ResnetDetError
from resnet_det.utils import comm
from resnet_det.utils.file_io import atomic_write_parts

logger = logging.getLogger(__name__)

__all__ = ["CACHE_ENV", "cache_dir", "load_or_build", "read_cache", "write_cache"]

CACHE_ENV = "RESNET_DET_CACHE"
_MAGIC = b"RDRECS1\n"
_ALIGN = 64
_VERSION = 1  # of the layout and of what the loaders put in records; a change invalidates every cache

Built = Tuple[RecordStore, dict]


class StaleCache(Exception):
    """The cache file is absent, of other contents, or damaged (the message says which)."""


def cache_dir() -> Optional[Path]:
    """The records cache folder, or None when ``$RESNET_DET_CACHE`` is ``none``."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() == "none":
        return None
    base = Path(value) if value else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resnet_det"
    return base.expanduser() / "records"


def _policy_text(policy: BadRecordPolicy) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(dataclasses.asdict(policy).items()))


def cache_path(folder: Path, name: str, sources: Sequence[Path], policy: BadRecordPolicy) -> Path:
    """The cache file of dataset ``name`` read from ``sources`` under ``policy``."""
    where = "\n".join([name, _policy_text(policy), *(str(Path(s).resolve()) for s in sources)])
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]
    return folder / f"{safe}-{hashlib.sha256(where.encode()).hexdigest()[:16]}.records"


def content_key(sources: Sequence[Path]) -> str:
    """What the records depend on: each file's bytes (SHA-256), each folder's modification time
    (an image added to or removed from it changes what the missing-image policy decides)."""
    h = hashlib.sha256(f"v{_VERSION}".encode())
    for source in sources:
        source = Path(source)
        if source.is_dir():
            h.update(f"dir {source.resolve()} {source.stat().st_mtime_ns}\n".encode())
        else:
            content = hashlib.sha256()
            with open(source, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    content.update(block)
            h.update(f"file {source.resolve()} ".encode() + content.digest())
    return h.hexdigest()


def _metadata_json(metadata: dict) -> dict:
    plain = {k: v for k, v in metadata.items() if k != "sanitize_counts"}
    if "label_to_category_id" in plain:
        plain["label_to_category_id"] = [[int(k), int(v)] for k, v in plain["label_to_category_id"].items()]
    return {"metadata": plain, "sanitize": metadata["sanitize_counts"].to_dict()}


def write_cache(path: Path, key: str, store: RecordStore, metadata: dict) -> None:
    """Write ``store`` and ``metadata`` (with its ``sanitize_counts``) to ``path`` atomically."""
    layout, offset = {}, 0
    for name in COLUMNS:
        array = np.ascontiguousarray(store.arrays[name])
        layout[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "offset": offset}
        offset += -(-array.nbytes // _ALIGN) * _ALIGN
    digest = hashlib.sha256()
    for name in COLUMNS:
        array = np.ascontiguousarray(store.arrays[name])
        digest.update(array.data)
        digest.update(b"\0" * (-array.nbytes % _ALIGN))
    header = orjson.dumps(
        {
            "key": key,
            "columns": layout,
            "payload_bytes": offset,
            "sha256": digest.hexdigest(),
            **_metadata_json(metadata),
        }
    )
    start = -(-(len(_MAGIC) + 8 + len(header)) // _ALIGN) * _ALIGN

    def parts():
        yield _MAGIC + struct.pack("<Q", len(header)) + header
        yield b"\0" * (start - len(_MAGIC) - 8 - len(header))
        for name in COLUMNS:
            array = np.ascontiguousarray(store.arrays[name])
            yield array.data
            yield b"\0" * (-array.nbytes % _ALIGN)

    atomic_write_parts(path, parts())


def read_cache(path: Path, key: str) -> Built:
    """The records and metadata in the cache ``path``, memory-mapped; ``StaleCache`` when the file
    is absent, not of ``key`` or damaged."""
    try:
        with open(path, "rb") as f:
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise StaleCache("absent") from None
    except (OSError, ValueError) as e:  # ValueError: an empty file cannot be mapped
        raise StaleCache(f"corrupt: it cannot be mapped ({e})") from None
    try:
        if buffer[: len(_MAGIC)] != _MAGIC:
            raise StaleCache("not a records cache of this version (corrupt?)")
        (size,) = struct.unpack("<Q", buffer[len(_MAGIC) : len(_MAGIC) + 8])
        header = orjson.loads(buffer[len(_MAGIC) + 8 : len(_MAGIC) + 8 + size])
        if header["key"] != key:
            raise StaleCache("stale: the dataset's files have changed since it was written")
        start = -(-(len(_MAGIC) + 8 + size) // _ALIGN) * _ALIGN
        if len(buffer) != start + header["payload_bytes"]:
            raise StaleCache(f"corrupt: {len(buffer)} bytes, expected {start + header['payload_bytes']} (truncated?)")
        if hashlib.sha256(memoryview(buffer)[start:]).hexdigest() != header["sha256"]:
            raise StaleCache("corrupt: its checksum does not match")
        arrays: Dict[str, np.ndarray] = {}
        for name in COLUMNS:
            spec = header["columns"][name]
            count = int(np.prod(spec["shape"]))
            arrays[name] = np.frombuffer(buffer, np.dtype(spec["dtype"]), count, start + spec["offset"])
            arrays[name] = arrays[name].reshape(spec["shape"])
        metadata = header["metadata"]
        if "label_to_category_id" in metadata:
            metadata["label_to_category_id"] = {k: v for k, v in metadata["label_to_category_id"]}
        metadata["sanitize_counts"] = SanitizeReport.from_dict(header["sanitize"])
        return RecordStore(arrays), metadata
    except StaleCache:
        raise
    except (KeyError, TypeError, ValueError, struct.error, orjson.JSONDecodeError) as e:
        raise StaleCache(f"corrupt: its header cannot be read ({type(e).__name__})") from None


def _read_or_build(path: Path, key: str, build: Callable[[], Built], may_build: bool) -> Built:
    try:
        return read_cache(path, key)
    except StaleCache as e:
        reason = str(e)
    if not may_build:
        raise DatasetError(
            f"records cache {path} is {reason} after LOCAL_RANK 0 of this node wrote it: give every node a "
            f"writable local or shared folder in ${CACHE_ENV}"
        )
    if reason != "absent":
        logger.warning("records cache %s is %s; rebuilding it", path, reason)
    store, metadata = build()
    try:
        write_cache(path, key, store, metadata)
    except ResnetDetError as e:
        if comm.get_world_size() > 1:
            raise
        logger.warning("%s; the records stay in memory (set %s to a writable folder)", e, CACHE_ENV)
        return store, metadata
    logger.info("records of %d images written to %s", len(store), path)
    del store
    return read_cache(path, key)


def load_or_build(
    folder: Path, name: str, sources: Sequence[Path], policy: BadRecordPolicy, build: Callable[[], Built]
) -> Built:
    """The records of ``name`` from its cache in ``folder``, built by ``build()`` and cached where
    it is absent, stale or corrupt; under torchrun, built by one process per node (module doc)."""
    path = cache_path(folder, name, sources, policy)
    key = content_key(sources)
    if comm.get_world_size() == 1:
        return _read_or_build(path, key, build, may_build=True)
    rank, local_rank = comm.get_rank(), comm.get_local_rank()
    my_step = 0 if rank == 0 else 1 if local_rank == 0 else 2
    result: Optional[Built] = None
    for step in range(3):
        error = None
        if step == my_step:
            try:
                result = _read_or_build(path, key, build, may_build=step < 2)
            except ResnetDetError as e:
                error = str(e)
        failed = [e for e in comm.all_gather_object(error) if e]
        if failed:
            raise DatasetError(failed[0])
    assert result is not None
    return result
