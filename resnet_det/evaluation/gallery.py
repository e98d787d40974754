"""The report's gallery: the images with the most errors, their boxes drawn by outcome.

Green: a detection that found an object; red: a false positive; blue: an object nothing found
(its class name, no score). Images are read from their ``file_name`` (relative names under
``image_root``); one that cannot be read is left out with a warning, not an error, since the
numbers do not depend on it.
"""

import logging
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np

from resnet_det.utils.visualization import draw_detections

logger = logging.getLogger(__name__)

OUTCOME_COLORS = {"tp": (40, 170, 60), "fp": (220, 40, 40), "missed": (40, 90, 230)}
MAX_SIDE = 640  # drawn images are scaled down to this long side, to keep report.html small


def _read(path: Path) -> Optional[np.ndarray]:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def gallery(
    images: Sequence[Mapping], class_names: Mapping[int, str], image_root: Optional[Path] = None
) -> List[Tuple[Dict, bytes]]:
    """(the image's row, JPEG bytes) for each row of ``report["images"]`` that carries boxes."""
    out = []
    for row in images:
        if "boxes" not in row or not row.get("file_name"):
            continue
        path = Path(row["file_name"])
        path = path if path.is_absolute() or image_root is None else Path(image_root) / path
        image = _read(path)
        if image is None:
            logger.warning("gallery: cannot read image %s (image id %s); left out", path, row["image_id"])
            continue
        scale = min(1.0, MAX_SIDE / max(image.shape[:2]))
        if scale < 1.0:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        names = [class_names.get(b["category_id"], str(b["category_id"])) for b in row["boxes"]]
        texts = [f"missed {n}" if b["score"] is None else f"{n} {b['score']:.2f}" for n, b in zip(names, row["boxes"])]
        boxes = [[v * scale for v in (x, y, x + w, y + h)] for x, y, w, h in (b["bbox"] for b in row["boxes"])]
        drawn = draw_detections(
            image,
            boxes,
            list(range(1, len(boxes) + 1)),
            None,  # the texts carry the scores; missed objects have none
            class_names=texts,
            colors=[OUTCOME_COLORS[b["outcome"]] for b in row["boxes"]],
        )
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        if ok:
            out.append((dict(row), jpeg.tobytes()))
    return out
