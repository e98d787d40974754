"""The built-in "shapes" datasets, generated on first use so that everything runs without a download.

Detection (``<root>/shapes/``, COCO format): circles, triangles and rectangles of random size,
colour and rotation on textured backgrounds (gradients with noise, stripes or blotches); some
overlap a little, some are clipped by the border. Objects are 16 px or more on each side (45 on
average) and contrast with their surroundings, so a small detector learns them in minutes on a CPU.

Classification (``<root>/shapes_cls/{train,val}/<class>/*.png``, ImageFolder layout): one centred
shape per 32x32 image, for pretraining a backbone on the same visual vocabulary.

Generation is deterministic (each image has its own seed, so the files are the same on every
machine with the same OpenCV), takes a few seconds, and is atomic and process-safe: a dataset is
written into a temporary folder beside its final place and renamed; when several processes
generate at once (torchrun), the first rename wins and the others discard their copy.
"""

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import cv2
import numpy as np

from resnet_det.errors import DatasetError

CLASS_NAMES = ("circle", "triangle", "rectangle")
SEED = 20151210  # the dataset is a fixed artifact: same seed, same files

DETECTION_IMAGES = {"train": 500, "val": 100}
IMAGE_SIZE_RANGE = (128, 256)  # width and height drawn independently
OBJECT_SIZE_RANGE = (24, 96)  # side of the shape's unclipped box
MAX_OBJECTS = 5
MIN_VISIBLE_SIDE = 16  # a clipped object keeps at least this much of each side
MIN_VISIBLE_AREA = 0.6  # ... and this fraction of its box, so that its class stays recognisable
MAX_OVERLAP = 0.3  # intersection / area of either box

CLASSIFICATION_IMAGES_PER_CLASS = {"train": 1000, "val": 200}
CLASSIFICATION_SIZE = 32

_SHIFT = 4  # cv2 drawing with 4 fractional bits: sub-pixel vertices
_SPLIT_CODE = {"train": 0, "val": 1}


def ensure_shapes_detection(root: os.PathLike) -> Path:
    """``<root>/shapes`` (generated unless present): ``{train,val}/*.png`` and
    ``annotations/instances_{train,val}.json``."""
    return _publish(Path(root) / "shapes", _write_detection)


def ensure_shapes_classification(root: os.PathLike) -> Path:
    """``<root>/shapes_cls`` (generated unless present): ``{train,val}/<class>/*.png``."""
    return _publish(Path(root) / "shapes_cls", _write_classification)


def _publish(target: Path, write: Callable[[Path], None]) -> Path:
    if target.is_dir():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            write(tmp)
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.is_dir():  # not a lost race: a real problem
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone after a successful rename
    except OSError as e:
        raise DatasetError(
            f"cannot generate {target} ({e.strerror or e}); make the data root writable or set --data-root"
        ) from None
    return target


def _write_detection(out: Path) -> None:
    (out / "annotations").mkdir()
    categories = [{"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASS_NAMES, start=1)]
    for split, count in DETECTION_IMAGES.items():
        (out / split).mkdir()
        images, annotations = [], []
        for image_id in range(1, count + 1):
            rng = np.random.default_rng([SEED, _SPLIT_CODE[split], image_id])
            image, objects = draw_detection_image(rng)
            file_name = f"{image_id:06d}.png"
            _imwrite(out / split / file_name, image)
            images.append({"id": image_id, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]})
            for label, (x0, y0, x1, y1) in objects:
                w, h = x1 - x0, y1 - y0
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": label,
                        "bbox": [round(x0, 2), round(y0, 2), round(w, 2), round(h, 2)],
                        "area": round(w * h, 2),
                        "iscrowd": 0,
                    }
                )
        instances = {"images": images, "annotations": annotations, "categories": categories}
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(instances))


def _write_classification(out: Path) -> None:
    for split, per_class in CLASSIFICATION_IMAGES_PER_CLASS.items():
        for label, name in enumerate(CLASS_NAMES, start=1):
            folder = out / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                rng = np.random.default_rng([SEED, 2 + _SPLIT_CODE[split], label, i])
                _imwrite(folder / f"{i:05d}.png", draw_classification_image(rng, label))


def _imwrite(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path.name}")


def draw_detection_image(rng: np.random.Generator) -> Tuple[np.ndarray, List[Tuple[int, Tuple[float, ...]]]]:
    """One RGB image and its objects ``[(label, (x0, y0, x1, y1))]`` (clipped to the image)."""
    width, height = (int(v) for v in rng.integers(IMAGE_SIZE_RANGE[0], IMAGE_SIZE_RANGE[1] + 1, size=2))
    image = _background(rng, height, width)
    objects: List[Tuple[int, Tuple[float, ...]]] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _attempt in range(20):
            label = int(rng.integers(1, len(CLASS_NAMES) + 1))
            size = float(rng.uniform(OBJECT_SIZE_RANGE[0], min(OBJECT_SIZE_RANGE[1], 0.6 * min(width, height))))
            # The centre may lie a little outside the image: those shapes are clipped by the border.
            cx, cy = rng.uniform(-0.2 * size, width + 0.2 * size), rng.uniform(-0.2 * size, height + 0.2 * size)
            polygon = _shape_polygon(rng, label, cx, cy, size)
            full = _polygon_box(polygon)
            box = _clip(full, width, height)
            visible = box is not None and _area(box) >= MIN_VISIBLE_AREA * _area(full)
            if visible and all(_overlap(box, other) <= MAX_OVERLAP for _, other in objects):
                _fill(image, polygon, _contrasting_colour(rng, image, box))
                objects.append((label, box))
                break
    return image, objects


def draw_classification_image(rng: np.random.Generator, label: int) -> np.ndarray:
    """A ``CLASSIFICATION_SIZE`` square RGB image with one shape of class ``label`` near its centre."""
    s = CLASSIFICATION_SIZE
    image = _background(rng, s, s)
    size = float(rng.uniform(0.45 * s, 0.85 * s))
    cx, cy = rng.uniform(0.4 * s, 0.6 * s, size=2)
    polygon = _shape_polygon(rng, label, cx, cy, size)
    _fill(image, polygon, _contrasting_colour(rng, image, _clip(_polygon_box(polygon), s, s, min_side=1)))
    return image


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A gradient between two random colours plus one texture: noise, stripes or blotches."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    t = x * math.cos(angle) + y * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    image = c0 + (c1 - c0) * t[..., None]
    texture = rng.integers(3)
    if texture == 0:
        image += rng.normal(0, rng.uniform(4, 20), size=(height, width, 1))
    elif texture == 1:
        period, phi = rng.uniform(6, 30), rng.uniform(0, math.pi)
        stripes = np.sign(np.sin(2 * math.pi * (x * math.cos(phi) + y * math.sin(phi)) / period))
        image += rng.uniform(8, 30) * stripes[..., None]
    else:
        coarse = rng.normal(0, rng.uniform(10, 30), size=(max(height // 16, 2), max(width // 16, 2), 3))
        image += cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(image, 0, 255).astype(np.uint8)


def _shape_polygon(rng: np.random.Generator, label: int, cx: float, cy: float, size: float) -> np.ndarray:
    """Vertices (N x 2) of a shape whose box side is about ``size``."""
    r = size / 2
    name = CLASS_NAMES[label - 1]
    theta = rng.uniform(0, 2 * math.pi)
    if name == "circle":
        angles = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        radii = np.full(64, r)
    elif name == "triangle":
        angles = theta + np.array([0, 2, 4]) * math.pi / 3 + rng.uniform(-0.25, 0.25, 3)
        radii = r * rng.uniform(0.85, 1.0, 3)
    else:
        aspect = rng.uniform(0.5, 1.0)  # the short side relative to the long one
        half = math.atan(aspect)  # corner angle of a rectangle of that aspect inscribed in radius r
        angles = theta + np.array([half, math.pi - half, math.pi + half, -half])
        radii = np.full(4, r)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def _polygon_box(polygon: np.ndarray) -> Tuple[float, float, float, float]:
    # cv2.fillPoly paints pixel i (which spans [i, i + 1) in the records' coordinates) from the
    # vertices' minimum to their maximum, both included: the painted extent is [min, max + 1).
    (x0, y0), (x1, y1) = polygon.min(axis=0), polygon.max(axis=0) + 1
    return float(x0), float(y0), float(x1), float(y1)


def _clip(box, width: int, height: int, min_side: float = MIN_VISIBLE_SIDE) -> Optional[Tuple[float, ...]]:
    """``box`` clipped to the image, or None when less than ``min_side`` of a side stays visible."""
    x0, y0, x1, y1 = max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height))
    if x1 - x0 < min_side or y1 - y0 < min_side:
        return None
    return x0, y0, x1, y1


def _area(box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def _overlap(a, b) -> float:
    """The larger of intersection/area(a) and intersection/area(b)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / min(_area(a), _area(b))


def _contrasting_colour(rng: np.random.Generator, image: np.ndarray, box) -> Tuple[int, int, int]:
    """The one of a few random saturated colours farthest from the background under ``box``."""
    x0, y0, x1, y1 = (int(v) for v in box)
    mean = image[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)].reshape(-1, 3).mean(axis=0)
    hsv = np.stack([rng.uniform(0, 180, 8), rng.uniform(150, 255, 8), rng.uniform(120, 255, 8)], axis=1)
    candidates = cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0].astype(np.float32)
    best = candidates[np.argmax(np.linalg.norm(candidates - mean, axis=1))]
    return tuple(int(v) for v in best)


def _fill(image: np.ndarray, polygon: np.ndarray, colour) -> None:
    points = np.round(polygon * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(image, [points], colour, lineType=cv2.LINE_AA, shift=_SHIFT)
