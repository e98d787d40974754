"""Crash-safe checkpoints: ``last_checkpoint``, pruning, corrupt-file fallback and RNG state.

Checkpoints are written with ``utils.file_io.atomic_torch_save`` (a temporary file renamed over the
target once on disk), so a run killed mid-save, or a disk that fills up, leaves the previous
checkpoint usable for ``--resume``.
"""

import contextlib
import logging
import os
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from backbones.errors import UnsafeFileError
from backbones.serialization import torch_load
from resnet_det.errors import CheckpointError, ConfigError
from resnet_det.utils.file_io import atomic_torch_save, atomic_write_text

__all__ = [
    "capture_rng_state",
    "restore_rng_state",
    "Checkpointer",
]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
FINAL_CHECKPOINT = "model_final.pth"
_PERIODIC = re.compile(r"^model_(\d{7,})\.pth$")
# Temporary files of utils.file_io's atomic writes of checkpoints, with the writer's process id.
_CHECKPOINT_TMP = re.compile(r"^\.model_(\d{7,}|final)\.pth\.(\d+)\.[0-9a-f]+\.tmp$")
# What a periodic checkpoint must hold to be resumed; anything less counts as corrupt.
# (model_final.pth holds only model, iteration, config and meta.)
RESUME_KEYS = ("model", "optimizer", "scheduler", "iteration", "rng")


def capture_rng_state() -> Dict[str, Any]:
    """The state of every random generator training draws from, so a resumed run draws the same.

    Tensors and plain data only, so that checkpoints load with ``torch.load(weights_only=True)``:
    numpy's state tuple holds an array, stored here as an int64 tensor beside its other fields.
    """
    algorithm, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "algorithm": str(algorithm),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _numpy_state(state: Any) -> tuple:
    # Checkpoints before the plain-data form hold numpy's own tuple.
    if not isinstance(state, dict):
        return tuple(state)
    keys = np.asarray(state["keys"].numpy() if torch.is_tensor(state["keys"]) else state["keys"]).astype(np.uint32)
    return (state["algorithm"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"])


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; CUDA states are restored for the GPUs present."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        for index, cuda_state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


class Checkpointer:
    """Saves ``model_{iteration:07d}.pth`` files in ``output_dir`` and finds the newest good one.

    ``last_checkpoint`` (a text file) names the newest complete checkpoint; it is rewritten only
    after that checkpoint is on disk. Only the newest ``max_keep`` periodic checkpoints are kept
    (``None`` keeps all); ``model_final.pth`` is never pruned. With ``is_main=False`` (ranks other
    than 0) nothing is written, but loading works so every rank can resume.
    """

    def __init__(self, output_dir: os.PathLike, max_keep: Optional[int] = 3, is_main: bool = True):
        if max_keep is not None and max_keep < 1:
            raise ConfigError(
                f"train.max_checkpoints_kept={max_keep}: keep at least 1 checkpoint, or the run cannot be resumed"
            )
        self.output_dir = Path(output_dir)
        self.max_keep = max_keep
        self.is_main = is_main

    def path_for(self, iteration: int) -> Path:
        return self.output_dir / f"model_{iteration:07d}.pth"

    def periodic_checkpoints(self) -> List[Path]:
        """The ``model_NNNNNNN.pth`` files present, oldest first (by iteration, not by mtime)."""
        if not self.output_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.output_dir.iterdir() if (m := _PERIODIC.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, iteration: int, state: Dict[str, Any]) -> Path:
        """Write ``state`` (plus ``iteration``) as the checkpoint of ``iteration``; return its path."""
        path = self.path_for(iteration)
        if not self.is_main:
            return path
        atomic_torch_save({**state, "iteration": iteration}, path)
        atomic_write_text(self.output_dir / LAST_CHECKPOINT, path.name + "\n")
        self._prune(keep=path)
        return path

    def save_final(self, state: Dict[str, Any]) -> Path:
        """Write ``model_final.pth``: the finished model, kept however many checkpoints are pruned."""
        path = self.output_dir / FINAL_CHECKPOINT
        if self.is_main:
            atomic_torch_save(state, path)
        return path

    def _prune(self, keep: Path) -> None:
        # Half-written files of a process killed while saving (each as large as a checkpoint).
        for path in self.output_dir.iterdir():
            m = _CHECKPOINT_TMP.match(path.name)
            if m and int(m.group(2)) != os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        if self.max_keep is None:
            return
        # Only files older than the one just written: after a fallback from a corrupt checkpoint,
        # a newer stale file is overwritten when training reaches its iteration again.
        older = self.periodic_checkpoints()
        older = older[: older.index(keep)] if keep in older else older
        for path in older[: max(len(older) - (self.max_keep - 1), 0)]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def latest(self) -> Optional[Path]:
        """The checkpoint ``last_checkpoint`` names (or the newest file present if it names none);
        always a file in ``output_dir``, whatever path a copied run folder's marker holds."""
        marker = self.output_dir / LAST_CHECKPOINT
        if marker.is_file():
            name = Path(marker.read_text().strip()).name
            if name:
                return self.output_dir / name
        present = self.periodic_checkpoints()
        return present[-1] if present else None

    def has_checkpoint(self) -> bool:
        """Whether a run already left checkpoints here (periodic or final)."""
        return self.latest() is not None or (self.output_dir / FINAL_CHECKPOINT).is_file()

    def load(self, path: os.PathLike, map_location: Any = "cpu") -> Dict[str, Any]:
        """Load one of our files (``model_*.pth``, periodic or final); a missing, truncated or
        foreign file is a CheckpointError.

        Only tensors and plain data are unpickled (``backbones.serialization``): a file that would
        run code is an ``UnsafeFileError``, never a fallback to an older checkpoint, unless the
        call opted in with ``trust_checkpoints``.
        """
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist; give the path of a model_*.pth file")
        try:
            state = torch_load(path, map_location=map_location)
        except UnsafeFileError:
            raise
        except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for damage
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(
                f"checkpoint {path} is corrupt ({reason}); delete it to resume from an older one"
            ) from e
        if not isinstance(state, dict) or "model" not in state:
            raise CheckpointError(f"{path} holds no model weights; give a model_*.pth file written by training")
        return state

    def load_latest(self, map_location: Any = "cpu") -> Optional[Dict[str, Any]]:
        """The newest checkpoint that loads; falls back to older ones past missing or corrupt files.

        Returns ``None`` (with a warning if checkpoints were present) when none of them loads.
        """
        newest = self.latest()
        if newest is None:
            return None
        older = [p for p in self.periodic_checkpoints() if _iteration_of(p) < _iteration_of(newest)]
        candidates = [newest] + older[::-1]
        for i, path in enumerate(candidates):
            try:
                state = self.load(path, map_location)
                missing = [k for k in RESUME_KEYS if k not in state]
                if missing:
                    raise CheckpointError(f"checkpoint {path} cannot be resumed (it lacks {', '.join(missing)})")
            except CheckpointError as e:
                fallback = candidates[i + 1] if i + 1 < len(candidates) else None
                then = f"resuming from {fallback} instead" if fallback else "no older checkpoint to resume from"
                logger.warning("%s; %s", _without_fix(str(e)), then)
                continue
            return state
        return None


def _iteration_of(path: Path) -> int:
    m = _PERIODIC.match(path.name)
    return int(m.group(1)) if m else -1


def _without_fix(message: str) -> str:
    # CheckpointError messages end with advice for the user ("; delete it ..."); when falling back
    # automatically that advice is moot, and the warning says what happens instead.
    return message.rsplit("; ", 1)[0]
