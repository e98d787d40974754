"""Image decoding with OpenCV: every readable image becomes ``H x W x 3`` uint8 RGB.

Real datasets hold grayscale, palette, RGBA and 16-bit files beside ordinary JPEGs; they are
converted rather than refused, so one odd file does not stop a run. Files that cannot be decoded
(empty, truncated, not an image) raise ``DatasetError`` naming the file; loaders whose policy is
"skip" use ``read_image_or_skip`` instead.
"""

import logging
import os
from typing import Optional, Set

import cv2
import numpy as np

from resnet_det.errors import DatasetError

logger = logging.getLogger(__name__)

# Any depth and colour type, EXIF orientation applied (as PIL's exif_transpose in detectron2).
# Alpha is dropped by IMREAD_ANYCOLOR; grayscale and 16-bit are kept here and converted below.
_FLAGS = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH

_skipped: Set[str] = set()  # files this process has already warned about


def read_image(path: os.PathLike, hint: str = "") -> np.ndarray:
    """Decode ``path`` to ``H x W x 3`` uint8 RGB; ``hint`` is appended to the error's fix."""
    suffix = f"; {hint}" if hint else ""
    try:
        data = np.fromfile(path, dtype=np.uint8)  # also reads non-ASCII paths, unlike cv2.imread
    except OSError as e:
        raise DatasetError(f"cannot read image {path} ({e.strerror}): check the path{suffix}") from None
    image = cv2.imdecode(data, _FLAGS) if data.size else None
    if image is None:
        raise DatasetError(
            f"cannot decode image {path} (corrupt or truncated file): "
            f"remove it from the annotations or replace it{suffix}"
        )
    if image.dtype == np.uint16:
        image = (image.astype(np.uint32) * 255 + 32767) // 65535  # 0..65535 -> 0..255, rounded
        image = image.astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DatasetError(f"image {path} has {image.dtype} pixels: convert it to 8-bit JPEG or PNG{suffix}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image_or_skip(path: os.PathLike, skip: bool, hint: str) -> Optional[np.ndarray]:
    """``read_image``, or when ``skip`` is set: warn once per file (with a running count) and return None."""
    if not skip:
        return read_image(path, hint)
    try:
        return read_image(path)
    except DatasetError as e:
        if str(path) not in _skipped:
            _skipped.add(str(path))
            logger.warning("skipping an unreadable image (%d in this process so far): %s", len(_skipped), e)
        return None
