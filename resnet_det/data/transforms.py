"""Detection augmentations on ``H x W x 3`` uint8 images and ``N x 4`` XYXY boxes (numpy).

The data loader resizes (the model never resizes again): the shortest side goes to ``min_size``
unless the longest would then exceed ``max_size`` (Faster R-CNN's rule, the paper's 600/1000).
Multi-scale training draws ``min_size`` from a list. Random choices come from a
``numpy.random.Generator`` that the caller seeds per sample, so an augmented batch depends only on
the run's seed and the iteration, not on the number of workers or on a resume.
"""

from typing import Sequence, Tuple

import cv2
import numpy as np


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """The scale that brings the shortest side to ``min_size``, the longest to at most ``max_size``."""
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return scale


def resize_shortest_edge(image: np.ndarray, min_size: int, max_size: int) -> Tuple[np.ndarray, float]:
    """The image resized by ``resize_scale`` (bilinear), and that scale."""
    height, width = image.shape[:2]
    scale = resize_scale(height, width, min_size, max_size)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size != (width, height):
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    return image, scale


def scale_boxes(boxes: np.ndarray, old_hw: Tuple[int, int], new_hw: Tuple[int, int]) -> np.ndarray:
    """Boxes of an ``old_hw`` image in the coordinates of the same image resized to ``new_hw``
    (per axis, so rounding of the new size does not shift the boxes)."""
    sy, sx = new_hw[0] / old_hw[0], new_hw[1] / old_hw[1]
    return boxes * np.array([sx, sy, sx, sy], dtype=boxes.dtype)


def hflip(image: np.ndarray, boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mirror left-right: x -> width - x, so x0 and x1 swap."""
    width = image.shape[1]
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), flipped


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.clip(boxes, 0, [width, height, width, height]).astype(boxes.dtype)


class TrainAugmentation:
    """Multi-scale shortest-side resize, then a horizontal flip with probability ``hflip_prob``."""

    def __init__(self, min_sizes: Sequence[int], max_size: int, hflip_prob: float):
        self.min_sizes = [int(s) for s in min_sizes]
        self.max_size = int(max_size)
        self.hflip_prob = float(hflip_prob)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        min_size = self.min_sizes[int(rng.integers(len(self.min_sizes)))]
        flip = rng.random() < self.hflip_prob
        resized, _ = resize_shortest_edge(image, min_size, self.max_size)
        boxes = scale_boxes(boxes, image.shape[:2], resized.shape[:2])
        if flip:
            resized, boxes = hflip(resized, boxes)
        return resized, boxes
