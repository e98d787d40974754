"""One writer per run folder: an exclusive lock that training holds on its output folder.

The lock is ``fcntl.flock`` on ``<output>/train.lock``, a file that records who holds it (host,
pid, start time). The kernel drops a flock when its holder exits, however it exits, so on one host
the lock cannot outlive its process: a lock file left with a record but no flock is the trace of a
process that died (SIGKILL, out of memory) and is taken over with a warning. A clean exit removes
the file. A second process finds the flock held and stops with an error that names the holder.
(Forked data-loader workers share the locked descriptor: after a SIGKILL the lock is free once
they have noticed and exited too, within seconds; a new run on the folder waits for that.)

On NFS, Linux turns flock into a POSIX byte-range lock that the server sees, so the lock holds
across client hosts with NFSv4 (or NFSv3 with lockd), but not on mounts with ``nolock`` or
``local_lock=flock``/``all``, where each host sees only its own locks. Therefore a record left by
another host is never taken over on its own: its process may still be alive there. The error says
to pass ``--force-unlock`` (``force=True``) once you know that host's training is gone. A
filesystem without locks at all (ENOLCK) is an error too, with the same way out.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Dict, Iterator, Optional

from resnet_det.errors import ConfigError

__all__ = ["LOCK_FILE", "RunLock", "hold_run_lock", "read_holder"]

logger = logging.getLogger(__name__)

LOCK_FILE = "train.lock"
FORCE_HINT = "--force-unlock"
ORPHAN_WAIT_S = 20  # data-loader workers check every 5 s that their parent lives (torch's MP_STATUS_CHECK_INTERVAL)

# Locks this process holds, by resolved folder: the tools hold the lock for the whole run and the
# Trainer takes it again around its own phases, which must not count as a second writer.
_HELD: Dict[Path, "RunLock"] = {}


def read_holder(output_dir: os.PathLike) -> Optional[dict]:
    """The record in ``output_dir``'s lock file (``{}`` if unreadable), or None if there is none."""
    path = Path(output_dir) / LOCK_FILE
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError):
        return None
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def _alive(pid) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts as gone: it holds no files)."""
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _describe(record: Optional[dict]) -> str:
    if not record:
        return "an unknown process"
    return f"pid {record.get('pid', '?')} on host {record.get('host', '?')} (started {record.get('started', '?')})"


class RunLock:
    """The exclusive lock of a run folder; use as a context manager (or ``acquire``/``release``).

    Re-entrant within one process: entering it again for a folder this process already holds
    just counts, so nested users share the one lock.
    """

    def __init__(self, output_dir: os.PathLike, force: bool = False):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_FILE
        self.force = force
        self._fd: Optional[int] = None
        self._depth = 0
        self._orphan_deadline: Optional[float] = None

    def acquire(self) -> "RunLock":
        key = self.output_dir.resolve()
        held = _HELD.get(key)
        if held is not None:
            held._depth += 1
            return held
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._fd = self._lock_file()
        try:
            self._take_over(read_holder(self.output_dir))
            record = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            }
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, (json.dumps(record) + "\n").encode(), 0)
            os.fsync(self._fd)
        except BaseException:
            os.close(self._fd)  # drops the flock; the file keeps the previous record
            self._fd = None
            raise
        self._depth = 1
        _HELD[key] = self
        return self

    def _lock_file(self) -> int:
        """An open descriptor of the lock file with the flock held, or a ConfigError naming the holder."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            except OSError as e:
                raise ConfigError(
                    f"cannot open {self.path}: {e.strerror}; make the folder writable or choose another --output"
                ) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    if self._wait_for_orphans():
                        continue
                    raise ConfigError(
                        f"{self.output_dir} is in use by another training process, {_describe(read_holder(self.output_dir))} "
                        f"(lock {self.path}): wait for it to finish or stop it, or choose another --output"
                    ) from None
                if self.force:
                    logger.warning(
                        "%s cannot be locked (%s); going on without the lock (%s)", self.path, e.strerror, FORCE_HINT
                    )
                    return os.open(self.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
                raise ConfigError(
                    f"cannot lock {self.path}: {e.strerror} (a filesystem without locks, e.g. NFS mounted nolock); "
                    f"choose an --output on a local disk, or pass {FORCE_HINT} if no other process trains this run"
                ) from None
            # The previous holder may have removed the file between our open and our flock: then we
            # hold a lock on a file nobody else can find, and must lock the one at the path.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def _wait_for_orphans(self) -> bool:
        """Whether to try the flock again: its holder on this host is dead, and what still holds the
        flock are the data-loader workers it forked, which exit within seconds of their parent.

        Waits up to ``ORPHAN_WAIT_S`` for them; past that, the error names the dead holder and how to
        find what still holds the file.
        """
        record = read_holder(self.output_dir)
        if not record or record.get("host") != socket.gethostname() or _alive(record.get("pid")):
            return False
        if self._orphan_deadline is None:
            self._orphan_deadline = time.monotonic() + ORPHAN_WAIT_S
            logger.warning(
                "%s died but processes it started still hold %s (data-loader workers exit soon after their "
                "parent); waiting up to %d s",
                _describe(record),
                self.path,
                ORPHAN_WAIT_S,
            )
        if time.monotonic() < self._orphan_deadline:
            time.sleep(0.2)
            return True
        raise ConfigError(
            f"{self.output_dir}: its training process {_describe(record)} is gone, but processes it started still "
            f"hold {self.path} after {ORPHAN_WAIT_S} s: stop them (`fuser -v {self.path}` lists them), then run again"
        )

    def _take_over(self, record: Optional[dict]) -> None:
        """Decide about a record left in the lock file by a holder that no longer holds the flock."""
        if record is None:
            return
        here = socket.gethostname()
        if record.get("host") == here:
            logger.warning(
                "taking over the lock of %s: that process is gone (it did not release %s)", _describe(record), self.path
            )
            return
        if self.force:
            logger.warning("%s: taking over the lock of %s", FORCE_HINT, _describe(record))
            return
        raise ConfigError(
            f"{self.output_dir} is locked by {_describe(record)}, another host than this one ({here}), "
            f"which may still be training it: if that host's training is gone, run again with {FORCE_HINT}"
        )

    def release(self) -> None:
        holder = _HELD.get(self.output_dir.resolve())
        if holder is None:
            return
        holder._depth -= 1
        if holder._depth == 0:
            holder._unlock()

    def _unlock(self) -> None:
        _HELD.pop(self.output_dir.resolve(), None)
        # Remove the file while still holding the flock, so that nobody locks it in between; a
        # process that opened it already sees the inode change and opens the path again.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def hold_run_lock(output_dir: os.PathLike, is_main: bool = True, force: bool = False) -> Iterator[None]:
    """Hold the run folder's lock in the main process (rank 0); other ranks write nothing and skip it."""
    if not is_main:
        yield
        return
    with RunLock(output_dir, force=force):
        yield
