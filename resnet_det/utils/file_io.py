"""Files written whole or not at all, and JSON read with the project's one-line errors.

Every file is written to a temporary name in its own folder, flushed to disk and renamed over the
target, so a reader sees either the old file or the complete new one, never half of one: a run
killed mid-save, or a disk that fills up, leaves the previous file usable. JSON files are checked
against ``$RESNET_DET_MAX_JSON_BYTES`` (``utils.limits``) before a byte is read.
"""

import contextlib
import errno
import json
import os
import re
import secrets
from pathlib import Path
from typing import IO, Any, Dict, Iterable, Iterator, List, Optional, Tuple, Type

from resnet_det.errors import CheckpointError, ResnetDetError
from resnet_det.utils.limits import check_json_size

__all__ = [
    "atomic_write_bytes",
    "atomic_write_parts",
    "atomic_write_text",
    "atomic_torch_save",
    "remove_temporary_files",
    "read_json",
    "json_lines",
]


def _fix_for(err: OSError) -> str:
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return "free space or choose another --output"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make the folder writable or choose another --output"
    return "check the folder or choose another --output"


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable. Best effort: some filesystems (and Windows) cannot open or
    # fsync a directory, and by now the new file is already complete under its final name.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_open(path: os.PathLike, previous: str) -> Iterator[IO]:
    """Yield a temporary file beside ``path`` that replaces ``path`` only once fully on disk."""
    path = Path(path)
    tmp: Optional[str] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Not tempfile.mkstemp: its files are private (0600); this one honours the umask like open().
        tmp = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        reason = e.strerror or str(e)
        raise CheckpointError(f"cannot write {path}: {reason}; {_fix_for(e)}; {previous}") from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    _fsync_dir(path.parent)


def atomic_write_bytes(path: os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; on failure the previous file is left as it was."""
    with _atomic_open(path, "the previous file is intact") as f:
        f.write(data)


def atomic_write_parts(path: os.PathLike, parts: Iterable[Any]) -> None:
    """Write the bytes-like ``parts`` one after another to ``path`` atomically (never all in memory)."""
    with _atomic_open(path, "the previous file is intact") as f:
        for part in parts:
            f.write(part)


def atomic_write_text(path: os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; on failure the previous file is left as it was."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: os.PathLike) -> None:
    """``torch.save`` straight into a temporary file (no second copy in memory), then rename."""
    import torch  # here, not at the top: writing text and reading JSON need no torch

    with _atomic_open(path, "the previous checkpoint is intact") as f:
        torch.save(obj, f)


# Any temporary file of _atomic_open: ".<name>.<pid>.<8 hex digits>.tmp".
_ATOMIC_TMP = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")


def remove_temporary_files(folder: os.PathLike) -> List[Path]:
    """Delete the temporary files that saves killed midway left in ``folder``; return them.

    Only for the folder's one writer (the holder of its run lock): another writer's save in
    progress would look the same.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        if _ATOMIC_TMP.match(path.name) and path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def read_json(
    path: os.PathLike, what: str, error: Type[ResnetDetError], fix: str = "fix or re-download the file"
) -> Any:
    """The parsed JSON of ``path`` (``what`` names it in messages); a missing, oversized or malformed
    file is one ``error`` naming the file, the line and column, and ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist: give the path of a JSON file")
    check_json_size(path, error)
    try:
        return json.loads(path.read_bytes())
    except OSError as e:
        raise error(f"cannot read {path} ({e.strerror}); check the path and its permissions") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: line {e.lineno} column {e.colno}: malformed JSON ({e.msg}); {fix}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a UTF-8 text file; the {what} must be JSON") from None
    except (ValueError, RecursionError) as e:  # absurd numbers, absurd nesting
        raise error(f"{path}: not a readable JSON file ({type(e).__name__}: {str(e)[:80]}); {fix}") from None


def json_lines(text: str) -> Iterator[Tuple[str, Dict]]:
    """``(line, object)`` for each complete line of a JSON-lines text that holds a JSON object; a
    torn last line (its writer killed mid-line) and damaged lines are left out."""
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            yield line, record
