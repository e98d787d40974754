"""Paths built from names in the data: read inside the dataset's folder, written inside the output folder.

A ``file_name`` in an annotation file (``../../x.jpg``, ``/etc/passwd``) or a dataset name in a
config someone shared is text from outside: joined onto a folder unchecked, it reads or writes
anywhere. Reading keeps such names to the folder the dataset's layout puts them in (lexically, so
that a dataset folder which is itself a symbolic link still works); writing turns a name into
one plain file name first.
"""

import os
import re
from pathlib import Path

from resnet_det.errors import DatasetError

__all__ = ["inside", "output_name", "output_path"]

# Anything but letters, digits and . _ - + = @ , becomes "_" in an output name (control characters,
# separators, quotes, spaces).
_UNSAFE = re.compile(r"[^\w.+=@,-]")


def inside(folder: os.PathLike, name: str, where: str) -> str:
    """``folder/name`` as an absolute path, refused (``DatasetError``, naming ``where``) when ``name``
    is absolute or climbs out of ``folder`` with ``..``."""
    root = os.path.normpath(os.path.abspath(folder))
    path = os.path.normpath(os.path.join(root, name))
    if os.path.isabs(name) or os.path.commonpath([root, path]) != root or path == root:
        raise DatasetError(
            f"{where}: file name {name!r} points outside {root}; a data set's file names are relative to "
            "its images folder: fix the name or move the file into that folder"
        )
    return path


def output_name(name: str, default: str = "output") -> str:
    """``name`` as one plain file name: its last component, characters outside ``[\\w.+=@,-]``
    replaced by ``_``, never empty, ``.`` or ``..``, nor hidden (a leading dot)."""
    base = _UNSAFE.sub("_", re.split(r"[\\/]", str(name))[-1]).lstrip(".")
    return base or default


def output_path(output_dir: os.PathLike, name: str) -> Path:
    """``output_dir / output_name(name)``: a file directly in ``output_dir``, whatever ``name`` says."""
    return Path(output_dir) / output_name(name)
