"""CIFAR-10's python pickle batches, read without running code, and the fixed validation hold-out."""

from pathlib import Path
from typing import List, Tuple

import numpy as np

from backbones.errors import UnsafeFileError
from backbones.serialization import load_pickle
from resnet_det.data.catalog import require_path
from resnet_det.errors import DatasetError

__all__ = ["load_cifar10", "holdout_split"]

_HOLDOUT_SEED = 0  # fixed, so every run holds out the same images
_CIFAR_FIX = "download CIFAR-10 (python version) again"


def _unpickle(path: Path) -> dict:
    """A CIFAR-10 batch: numpy arrays and plain data only; a pickle that would run code is refused."""
    try:
        return load_pickle(path, encoding="bytes", trustable=False)
    except UnsafeFileError:
        raise
    except OSError as e:
        raise DatasetError(f"cannot read {path} ({e.strerror}); {_CIFAR_FIX}") from None
    except Exception as e:  # unpickling can fail in many ways on a damaged file
        raise DatasetError(f"{path} is not a CIFAR-10 python batch ({type(e).__name__}); {_CIFAR_FIX}") from None


def _cifar_batch(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """One pickled batch: ``b"data"`` (N x 3072 uint8, each row R, G then B planes) and ``b"labels"``."""
    batch = _unpickle(path)
    try:
        data, labels = batch[b"data"], np.asarray(batch[b"labels"], dtype=np.int64)
    except (TypeError, KeyError, ValueError):
        data = labels = None
    valid = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == (3072,)
    if not (valid and labels.shape == (len(data),) and ((labels >= 0) & (labels <= 9)).all()):
        raise DatasetError(f"{path}: expected b'data' (N x 3072 uint8) and N b'labels' in 0..9; {_CIFAR_FIX}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar10(root: Path, train: bool) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """``(images N x 32 x 32 x 3 uint8 RGB, labels int64, class_names)`` from ``<root>/cifar10/cifar-10-batches-py``."""
    folder = root / "cifar10" / "cifar-10-batches-py"
    fix = f"put the python version (cifar-10-batches-py/) under {root / 'cifar10'}/"
    require_path(folder, "CIFAR-10", fix, is_dir=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = zip(*(_cifar_batch(folder / name) for name in names))
    meta = _unpickle(folder / "batches.meta")
    try:
        class_names = [name.decode() for name in meta[b"label_names"]]
    except (TypeError, KeyError, AttributeError, UnicodeDecodeError):
        class_names = []
    if len(class_names) != 10:
        raise DatasetError(f"{folder / 'batches.meta'}: expected 10 b'label_names'; {_CIFAR_FIX}")
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), class_names


def holdout_split(size: int, holdout: int) -> Tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, val)`` indices: ``holdout`` random samples for validation, the same every run."""
    order = np.random.default_rng(_HOLDOUT_SEED).permutation(size)
    return np.sort(order[holdout:]), np.sort(order[:holdout])
