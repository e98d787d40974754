"""Reading pickled files (``.pth``, ``.pkl``, CIFAR-10 batches) without running code from them.

A pickle names the functions that rebuild its objects, and unpickling calls them: a shared
checkpoint can run any command on the machine that loads it. So every file is read with a
restricted unpickler that rebuilds tensors, numpy arrays and plain data (dicts, lists, tuples,
strings, numbers) and refuses any other function with an ``UnsafeFileError`` naming the file.

A user who trusts a file may opt in for one call (the tools' ``--trust-checkpoint``), inside
``trust_checkpoints()``: a file the safe reader refuses is then loaded with full unpickling, and a
warning says so. Files the safe reader accepts are always read safely.
"""

import contextlib
import contextvars
import importlib
import logging
import os
import pickle
import re
from typing import Any, Iterator

import numpy as np
import torch

from .errors import UnsafeFileError

__all__ = ["TRUST_FLAG", "load_pickle", "torch_load", "trust_checkpoints", "trusting"]

logger = logging.getLogger(__name__)

TRUST_FLAG = "--trust-checkpoint"
_TRUST = contextvars.ContextVar("trust_checkpoints", default=False)

# What numpy arrays pickle to: enough to rebuild them, nothing that can run code.
_NUMPY_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
    }
)
# Python 3 pickles of bytes with protocol < 3 rebuild them with _codecs.encode (a str -> bytes).
_PLAIN_GLOBALS = frozenset({("_codecs", "encode")})


@contextlib.contextmanager
def trust_checkpoints(enabled: bool = True) -> Iterator[None]:
    """Within this block, files that need full unpickling are loaded (with a warning) instead of refused."""
    token = _TRUST.set(bool(enabled))
    try:
        yield
    finally:
        _TRUST.reset(token)


def trusting() -> bool:
    """Whether the current call opted in to full unpickling (``trust_checkpoints``)."""
    return _TRUST.get()


def _refused(path: os.PathLike, needs: str, trustable: bool) -> UnsafeFileError:
    fix = f"pass {TRUST_FLAG} if you trust the file" if trustable else "replace it with a copy from its source"
    return UnsafeFileError(
        f"{path} is refused: loading it would call {needs}, which is not part of tensors, numpy arrays "
        f"or plain data, and can run code; {fix}"
    )


def _warn_trusted(path: os.PathLike, needs: str) -> None:
    logger.warning(
        "%s: loading with full unpickling because of %s (it calls %s); a file loaded this way can run "
        "any code: do this only for files you trust",
        path,
        TRUST_FLAG,
        needs,
    )


def _numpy_globals() -> list:
    allowed = [getattr(importlib.import_module(module), name) for module, name in sorted(_NUMPY_GLOBALS)]
    return allowed + [getattr(np.dtypes, name) for name in np.dtypes.__all__]  # e.g. UInt32DType


# How torch's safe unpickler names what it refused ("Unsupported global: GLOBAL posix.system ...",
# "Trying to load unsupported GLOBAL posix.system whose module posix is blocked").
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def torch_load(path: os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` of tensors, numpy arrays and plain data only (``weights_only=True``).

    A file that needs more raises ``UnsafeFileError`` (or, inside ``trust_checkpoints``, is loaded
    fully with a warning); damage raises what ``torch.load`` raises.
    """
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        match = _REFUSED_GLOBAL.search(str(e))
        if match is None:
            raise  # damage, not a refusal
        needs = match.group(1)
    if not trusting():
        raise _refused(path, needs, trustable=True)
    _warn_trusted(path, needs)
    return torch.load(path, map_location=map_location, weights_only=False)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain data and refuses anything else, as ``weights_only`` does for torch."""

    def find_class(self, module: str, name: str):
        if module.startswith("numpy.core"):  # written with numpy < 2
            module = "numpy._core" + module[len("numpy.core") :]
        if (module, name) in _NUMPY_GLOBALS or (module, name) in _PLAIN_GLOBALS:
            return super().find_class(module, name)
        raise _Refusal(f"{module}.{name}")


class _Refusal(pickle.UnpicklingError):
    """What ``_SafeUnpickler`` raises: the global it refused, to report by the caller."""


def load_pickle(path: os.PathLike, encoding: str = "ASCII", trustable: bool = True) -> Any:
    """``pickle.load`` of numpy arrays and plain data only; ``encoding`` as for ``pickle.load``
    (``"latin1"`` or ``"bytes"`` for Python 2 files). ``trustable=False``: never loaded fully, even
    inside ``trust_checkpoints`` (data files, which no flag should make run code)."""
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(f, encoding=encoding).load()
    except _Refusal as e:
        needs = str(e)
    if not (trustable and trusting()):
        raise _refused(path, needs, trustable)
    _warn_trusted(path, needs)
    with open(path, "rb") as f:
        return pickle.load(f, encoding=encoding)
