"""Drawing detections on an image with OpenCV: boxes, class names and scores.

Lines and text scale with the image's shorter side. Every label stays inside the image (shrunk
if it is wider than the image) and is placed where it covers no other label if it can: above
its box, else inside its top edge, below it, inside its bottom edge, or right-aligned; the
highest-scoring detections choose first.
"""

import colorsys
from typing import Dict, List, Optional, Sequence, Tuple

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


Color = Tuple[int, int, int]
Rect = Tuple[int, int, int, int]  # x0, y0, x1, y1


def _overlap(a: Rect, b: Rect) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def place_label(box: Rect, size: Tuple[int, int], width: int, height: int, taken: Sequence[Rect]) -> Rect:
    """Where a label of ``size`` (w, h) goes for ``box``: the first of the candidate places
    (see the module's docstring) that covers none of ``taken``, else the one covering least;
    always inside the ``width`` x ``height`` image."""
    w, h = size
    x0, y0, x1, y1 = box
    candidates = [(x0, y0 - h), (x0, y0), (x0, y1), (x0, y1 - h), (x1 - w, y0 - h), (x1 - w, y0), (x1 - w, y1)]
    best: Optional[Tuple[int, Rect]] = None
    for cx, cy in candidates:
        cx, cy = min(max(cx, 0), max(width - w, 0)), min(max(cy, 0), max(height - h, 0))
        rect = (cx, cy, cx + w, cy + h)
        covered = sum(_overlap(rect, t) for t in taken)
        if covered == 0:
            return rect
        if best is None or covered < best[0]:
            best = (covered, rect)
    assert best is not None
    return best[1]


def draw_detections(
    image: np.ndarray,
    boxes,
    labels,
    scores=None,
    class_names: Optional[Sequence[str]] = None,
    score_thresh: float = 0.5,
    colors: Optional[Sequence[Color]] = None,
) -> np.ndarray:
    """A copy of an RGB uint8 ``H x W x 3`` image with the detections drawn on it.

    ``boxes`` are ``[x0, y0, x1, y1]`` in the image's pixels, ``labels`` 1..K (named
    ``class_names[label - 1]`` when given), ``scores`` optional; boxes scoring below
    ``score_thresh`` are left out. ``colors`` (one RGB per box) replace the class colours, as the
    report's gallery does to tell hits from errors. Higher scores are drawn last, so their
    boxes and labels stay on top where they overlap.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"draw_detections takes an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}")
    canvas = np.array(image, order="C")  # a copy: the caller's image stays as it was
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    show_scores = scores is not None
    scores = np.ones(len(boxes)) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if not len(boxes) == len(labels) == len(scores) or (colors is not None and len(colors) != len(boxes)):
        raise ValueError(
            f"draw_detections: {len(boxes)} boxes, {len(labels)} labels and {len(scores)} scores differ in number"
            + (f" ({len(colors)} colors)" if colors is not None else "")
        )

    height, width = canvas.shape[:2]
    short = min(height, width)
    thickness = max(1, round(short / 300))
    font_scale = max(0.35, short / 1000)
    text_thickness = max(1, round(font_scale * 1.5))
    shown = [int(i) for i in np.argsort(-scores, kind="stable") if scores[i] >= score_thresh]  # best first
    color_of: Dict[int, Color] = {}
    rects: Dict[int, Rect] = {}
    for i in shown:
        color_of[i] = class_color(int(labels[i])) if colors is None else (colors[i][0], colors[i][1], colors[i][2])
        x0, y0, x1, y1 = (int(round(v)) for v in boxes[i])
        rects[i] = (x0, y0, x1, y1)
    for i in reversed(shown):
        cv2.rectangle(canvas, rects[i][:2], rects[i][2:], color_of[i], thickness)
    taken: List[Rect] = []
    texts = {}
    for i in shown:
        name = class_names[labels[i] - 1] if class_names is not None else str(labels[i])
        text = f"{name} {scores[i]:.2f}" if show_scores else name
        scale = font_scale
        (tw, th), baseline = cv2.getTextSize(text, FONT, scale, text_thickness)
        if tw + 4 > width:  # shrink to fit the image's width
            scale *= (width - 4) / (tw + 4)
            (tw, th), baseline = cv2.getTextSize(text, FONT, scale, text_thickness)
        rect = place_label(rects[i], (tw + 4, th + baseline + 2), width, height, taken)
        taken.append(rect)
        texts[i] = (text, scale, rect, th)
    for i in reversed(shown):
        text, scale, (x0, y0, x1, y1), th = texts[i]
        cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), color_of[i], cv2.FILLED)
        cv2.putText(
            canvas, text, (x0 + 1, y0 + th + 1), FONT, scale, _text_color(color_of[i]), text_thickness, cv2.LINE_AA
        )
    return canvas
