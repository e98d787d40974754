"""How large an input may be before it is read: JSON files by their size, images by the size their
header claims. A hostile or broken file is refused with one line before gigabytes are allocated.

Each limit is an environment variable that a user with genuinely larger data raises:

- ``RESNET_DET_MAX_JSON_BYTES``: annotation, results and report files (default 2 GiB; COCO's
  largest instances file is under 0.5 GB, LVIS's 1.1 GB);
- ``RESNET_DET_MAX_IMAGE_PIXELS``: width x height of one image (default 2**28, e.g. 16384 x 16384).
"""

import os
from pathlib import Path

from resnet_det.errors import ConfigError

__all__ = ["MAX_IMAGE_PIXELS_ENV", "MAX_JSON_BYTES_ENV", "check_json_size", "max_image_pixels", "max_json_bytes"]

MAX_JSON_BYTES_ENV = "RESNET_DET_MAX_JSON_BYTES"
MAX_IMAGE_PIXELS_ENV = "RESNET_DET_MAX_IMAGE_PIXELS"
DEFAULT_MAX_JSON_BYTES = 2 * 1024**3
DEFAULT_MAX_IMAGE_PIXELS = 2**28


def _limit(env: str, default: int) -> int:
    text = os.environ.get(env, "").strip()
    if not text:
        return default
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"${env}={text!r}: give a positive whole number (default {default})")
    return value


def max_json_bytes() -> int:
    return _limit(MAX_JSON_BYTES_ENV, DEFAULT_MAX_JSON_BYTES)


def max_image_pixels() -> int:
    return _limit(MAX_IMAGE_PIXELS_ENV, DEFAULT_MAX_IMAGE_PIXELS)


def check_json_size(path: os.PathLike, error=ConfigError) -> None:
    """Raise ``error`` when ``path`` is larger than ``$RESNET_DET_MAX_JSON_BYTES``; a missing file
    passes (its reader says it is missing)."""
    try:
        size = Path(path).stat().st_size
    except OSError:
        return
    limit = max_json_bytes()
    if size > limit:
        raise error(
            f"{path} is {size:,} bytes, more than the limit for a JSON file ({limit:,}): not read; if it "
            f"is genuine, raise the limit with {MAX_JSON_BYTES_ENV}={size}"
        )
