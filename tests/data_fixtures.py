"""Tiny datasets written into a test's tmp folder: COCO json, VOC XML, image folders, CIFAR pickles."""

import json
import pickle
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np

from resnet_det.config import ClassificationConfig, DetectionConfig, load_config


def write_image(path: Path, height: int, width: int, seed: int = 0, channels: int = 3, dtype=np.uint8) -> np.ndarray:
    """A random image written with OpenCV (BGR order on disk); returns what was written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    high = 65536 if dtype == np.uint16 else 256
    shape = (height, width) if channels == 1 else (height, width, channels)
    image = np.random.default_rng(seed).integers(0, high, size=shape).astype(dtype)
    assert cv2.imwrite(str(path), image)
    return image


# Categories with gaps in their ids, listed out of order: labels must follow the sorted ids.
CATEGORIES = [{"id": 11, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]


def coco_dict() -> dict:
    """Three images: one with two boxes, one with a box and a crowd region, one without boxes."""
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 40, "width": 60},
            {"id": 2, "file_name": "b.png", "height": 60, "width": 40},
            {"id": 5, "file_name": "c.png", "height": 50, "width": 50},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 5, 20, 15], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 11, "bbox": [0, 0, 60, 40], "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [5, 10, 30, 40], "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 3, "bbox": [1, 1, 10, 10], "iscrowd": 1},
        ],
        "categories": [dict(c) for c in CATEGORIES],
    }


def make_coco(root: Path, data: Optional[dict] = None, write_images: bool = True) -> tuple:
    """Write ``data`` (default ``coco_dict()``) as ``root/annotations.json`` and its images under
    ``root/images``; returns ``(json_path, images_dir)``."""
    data = coco_dict() if data is None else data
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    if write_images:
        for i, img in enumerate(data["images"]):
            write_image(images_dir / img["file_name"], img["height"], img["width"], seed=i)
    json_path = root / "annotations.json"
    json_path.write_text(json.dumps(data, indent=1))
    return json_path, images_dir


def voc_xml(width: int, height: int, objects: List[dict]) -> str:
    """VOC annotation XML; an object is ``{"name", "box": (xmin, ymin, xmax, ymax), "difficult"?,
    "truncated"?, "parts"?: [(name, box)]}``."""

    def bndbox(b):
        return f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox>"

    body = []
    for obj in objects:
        parts = "".join(f"<part><name>{n}</name>{bndbox(b)}</part>" for n, b in obj.get("parts", []))
        body.append(
            f"<object><name>{obj['name']}</name><truncated>{obj.get('truncated', 0)}</truncated>"
            f"<difficult>{obj.get('difficult', 0)}</difficult>{bndbox(obj['box'])}{parts}</object>"
        )
    size = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
    return f"<annotation><folder>VOC2007</folder>{size}{''.join(body)}</annotation>"


def make_voc(root: Path, year: str, image_set: str, images: Dict[str, dict]) -> Path:
    """``root/VOCdevkit/VOC<year>`` with ``images = {voc_id: {"size": (w, h), "objects": [...]}}``."""
    voc_root = root / "VOCdevkit" / f"VOC{year}"
    (voc_root / "Annotations").mkdir(parents=True, exist_ok=True)
    (voc_root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for i, (voc_id, spec) in enumerate(images.items()):
        w, h = spec["size"]
        (voc_root / "Annotations" / f"{voc_id}.xml").write_text(voc_xml(w, h, spec["objects"]))
        write_image(voc_root / "JPEGImages" / f"{voc_id}.jpg", h, w, seed=i)
    (voc_root / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in images))
    return voc_root


def make_image_folder(root: Path, counts: Dict[str, int], size: int = 12) -> Path:
    """``root/<class>/<i>.png`` with ``counts[class]`` random images each."""
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_image(root / name / f"{i}.png", size, size, seed=100 * c + i)
    return root


def make_cifar(root: Path, per_batch: int = 6) -> Path:
    """A CIFAR-10 python folder under ``root/cifar10`` whose image k of a batch has every red pixel
    = k, green = 100, blue = 200 (so the channel-major layout can be checked) and label k % 10."""
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = np.zeros((per_batch, 3, 32, 32), np.uint8)
        data[:, 0] = np.arange(per_batch, dtype=np.uint8)[:, None, None]
        data[:, 1], data[:, 2] = 100, 200
        batch = {b"data": data.reshape(per_batch, 3072), b"labels": [k % 10 for k in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return folder


def detection_cfg(*overrides: str):
    return load_config(DetectionConfig, None, ["dataloader.num_workers=0", *overrides])


def classification_cfg(*overrides: str):
    return load_config(ClassificationConfig, None, ["dataloader.num_workers=0", *overrides])


# Three images in an own VOC-style folder: own classes, a png, a difficult box, a 1-image split.
OWN_VOC = {
    "img_a": {
        "size": (60, 40),
        "objects": [{"name": "bolt", "box": (11, 6, 30, 20)}, {"name": "nut", "box": (1, 1, 60, 40)}],
    },
    "img_b": {"size": (40, 60), "objects": [{"name": "nut", "box": (6, 11, 35, 50), "difficult": 1}]},
    "img_c": {"size": (50, 50), "objects": []},
}


def make_voc_style(root: Path, images: Optional[Dict[str, dict]] = None, suffix: str = ".png") -> Path:
    """``root/{Annotations, JPEGImages, ImageSets/Main/val.txt (the first image)}``; images as in ``make_voc``."""
    images = OWN_VOC if images is None else images
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for i, (voc_id, spec) in enumerate(images.items()):
        w, h = spec["size"]
        (root / "Annotations" / f"{voc_id}.xml").write_text(voc_xml(w, h, spec["objects"]))
        write_image(root / "JPEGImages" / f"{voc_id}{suffix}", h, w, seed=i)
    (root / "ImageSets" / "Main" / "val.txt").write_text(f"{next(iter(images))}\n")
    return root


# YOLO labels (class cx cy w h) of two train images (64x48, 32x32) and one val image (40x40).
YOLO_NAMES = ["bolt", "nut", "washer"]
YOLO_LABELS = {
    "train/a.png": ((48, 64), "0 0.5 0.5 0.25 0.5\n2 0.125 0.25 0.25 0.5\n"),
    "train/b.jpg": ((32, 32), ""),
    "val/c.png": ((40, 40), "1 0.5 0.5 1.0 1.0\n"),
}


def make_yolo(root: Path, labels: Optional[Dict[str, tuple]] = None, names=YOLO_NAMES) -> Path:
    """``root/images/<split>/``, ``root/labels/<split>/``, ``root/data.yaml`` (train, val); returns the yaml."""
    labels = YOLO_LABELS if labels is None else labels
    for i, (name, ((h, w), text)) in enumerate(labels.items()):
        write_image(root / "images" / name, h, w, seed=i)
        if text is not None:
            label = (root / "labels" / name).with_suffix(".txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(text)
    data = root / "data.yaml"
    names_yaml = "".join(f"  {i}: {n}\n" for i, n in enumerate(names))
    data.write_text(f"path: .\ntrain: images/train\nval: images/val\nnames:\n{names_yaml}")
    return data
