"""Image folders: ``<split>/<class>/**/<image>``, the layout of ImageNet, the shapes set and a user's own."""

from pathlib import Path
from typing import List, Tuple

import numpy as np

from resnet_det.errors import DatasetError

__all__ = ["IMAGE_EXTENSIONS", "image_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


def image_folder(split_dir: Path) -> Tuple[List[str], np.ndarray, List[str]]:
    """``(paths, labels, class_names)`` of ``<split_dir>/<class>/**/<image>``; classes sorted by name."""
    if not split_dir.is_dir():
        raise DatasetError(f"image folder not found: {split_dir}; put the images in {split_dir}/<class name>/")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not classes:
        raise DatasetError(f"{split_dir} has no class folders; put the images in {split_dir}/<class name>/")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(
            str(p) for p in (split_dir / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not files:
            raise DatasetError(
                f"class folder {split_dir / name} has no images (.jpg, .png, ...); add images or remove the folder"
            )
        paths += files
        labels += [label] * len(files)
    return paths, np.array(labels, dtype=np.int64), classes
