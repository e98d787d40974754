"""Image decoding with OpenCV: every readable image becomes ``H x W x 3`` uint8 RGB.

Real datasets hold grayscale, palette, RGBA and 16-bit files beside ordinary JPEGs; they are
converted rather than refused, so one odd file does not stop a run. Files that cannot be decoded
(empty, truncated, not an image) raise ``DatasetError`` naming the file; loaders whose policy is
"skip" use ``read_image_or_skip`` instead.

Before decoding, the size a PNG, JPEG, GIF or BMP header claims is checked against
``$RESNET_DET_MAX_IMAGE_PIXELS`` (``resnet_det.utils.limits``): a file of a few bytes can claim
100000 x 100000 pixels, 30 GB once decoded. Other formats are bounded by OpenCV's own limit
(``OPENCV_IO_MAX_IMAGE_PIXELS``, 2**30 pixels, read when cv2 is imported).
"""

import logging
import os
import struct
from typing import Optional, Set, Tuple

import cv2
import numpy as np

from resnet_det.errors import DatasetError
from resnet_det.utils.limits import MAX_IMAGE_PIXELS_ENV, max_image_pixels

logger = logging.getLogger(__name__)

# Any depth and colour type, EXIF orientation applied (as PIL's exif_transpose in detectron2).
# Alpha is dropped by IMREAD_ANYCOLOR; grayscale and 16-bit are kept here and converted below.
_FLAGS = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH

_skipped: Set[str] = set()  # files this process has already warned about


# JPEG start-of-frame markers (they hold the size); C4, C8 and CC are other segments.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# JPEG markers without a length field.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def _jpeg_size(data: np.ndarray) -> Optional[Tuple[int, int]]:
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = int(data[i + 1])
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _JPEG_STANDALONE:
            i += 2
        elif marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", data, i + 5)
            return width, height
        else:
            i += 2 + struct.unpack_from(">H", data, i + 2)[0]
    return None


def header_size(data: np.ndarray) -> Optional[Tuple[int, int]]:
    """``(width, height)`` as the header of a PNG, JPEG, GIF or BMP file claims it; None for
    other formats or a header too short to say."""
    head = data[:26].tobytes()
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        return struct.unpack_from(">II", head, 16)
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if head.startswith((b"GIF87a", b"GIF89a")) and len(head) >= 10:
        return struct.unpack_from("<HH", head, 6)
    if head.startswith(b"BM") and len(head) >= 26:
        width, height = struct.unpack_from("<ii", head, 18)
        return abs(width), abs(height)
    return None


def _check_size(path: os.PathLike, data: np.ndarray) -> None:
    size = header_size(data)
    limit = max_image_pixels()
    if size is not None and size[0] * size[1] > limit:
        raise DatasetError(
            f"image {path} claims {size[0]}x{size[1]} pixels in its header, more than the limit of {limit:,}: "
            f"not decoded; if it is genuine, raise the limit with {MAX_IMAGE_PIXELS_ENV}={size[0] * size[1]}"
        )


def read_image(path: os.PathLike, hint: str = "") -> np.ndarray:
    """Decode ``path`` to ``H x W x 3`` uint8 RGB; ``hint`` is appended to the error's fix."""
    suffix = f"; {hint}" if hint else ""
    try:
        data = np.fromfile(path, dtype=np.uint8)  # also reads non-ASCII paths, unlike cv2.imread
    except OSError as e:
        raise DatasetError(f"cannot read image {path} ({e.strerror}): check the path{suffix}") from None
    _check_size(path, data)
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
