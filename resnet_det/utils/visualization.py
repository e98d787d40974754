"""Drawing detections on an image with OpenCV: boxes, class names and scores."""

import colorsys
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
GOLDEN_RATIO_CONJUGATE = 0.618033988749895


def class_color(label: int) -> Tuple[int, int, int]:
    """A stable RGB colour per class; hues stepped by the golden ratio stay far apart for
    neighbouring labels, however many classes there are."""
    r, g, b = colorsys.hsv_to_rgb((label * GOLDEN_RATIO_CONJUGATE) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _text_color(background: Tuple[int, int, int]) -> Tuple[int, int, int]:
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def draw_detections(
    image: np.ndarray,
    boxes,
    labels,
    scores=None,
    class_names: Optional[Sequence[str]] = None,
    score_thresh: float = 0.5,
) -> np.ndarray:
    """A copy of an RGB uint8 ``H x W x 3`` image with the detections drawn on it.

    ``boxes`` are ``[x0, y0, x1, y1]`` in the image's pixels, ``labels`` 1..K (named
    ``class_names[label - 1]`` when given), ``scores`` optional; boxes scoring below
    ``score_thresh`` are left out. Lines and text scale with the image; higher scores are drawn
    last, so their labels stay readable where boxes overlap.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"draw_detections takes an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}")
    canvas = np.array(image, order="C")  # a copy: the caller's image stays as it was
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    show_scores = scores is not None
    scores = np.ones(len(boxes)) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if not len(boxes) == len(labels) == len(scores):
        raise ValueError(
            f"draw_detections: {len(boxes)} boxes, {len(labels)} labels and {len(scores)} scores differ in number"
        )

    height, width = canvas.shape[:2]
    thickness = max(1, round(min(height, width) / 300))
    font_scale = max(0.35, min(height, width) / 1000)
    for i in [i for i in np.argsort(scores, kind="stable") if scores[i] >= score_thresh]:
        color = class_color(int(labels[i]))
        x0, y0, x1, y1 = (int(round(v)) for v in boxes[i])
        cv2.rectangle(canvas, (x0, y0), (x1, y1), color, thickness)
        name = class_names[labels[i] - 1] if class_names is not None else str(labels[i])
        text = f"{name} {scores[i]:.2f}" if show_scores else name
        (tw, th), baseline = cv2.getTextSize(text, FONT, font_scale, 1)
        tx = min(max(x0, 0), max(width - tw - 2, 0))
        # Above the box when it fits, else just inside its top edge.
        ty = y0 - th - baseline - 2 if y0 - th - baseline - 2 >= 0 else max(y0, 0)
        cv2.rectangle(canvas, (tx, ty), (tx + tw + 2, ty + th + baseline + 2), color, cv2.FILLED)
        cv2.putText(canvas, text, (tx + 1, ty + th + 1), FONT, font_scale, _text_color(color), 1, cv2.LINE_AA)
    return canvas
