"""A trained detector run over image files and videos: drawn copies and the detections per file.

What tools/infer.py does for an image, a folder or a video. Each drawn image goes under a plain
file name directly in the output folder (``utils.safe_paths``), written atomically; a video becomes
``<name>_detections.mp4``. The detections of each image (or video frame) are one record with the
file name, boxes ``[x0, y0, x1, y1]`` in pixels, scores, labels and class names: what a person or a
script reading a folder of photos wants, where evaluation's COCO results (``image_id``,
``category_id``, ``[x, y, w, h]``) need a dataset's ids.
"""

from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import cv2
from tqdm import tqdm

from resnet_det.data.image_io import read_image
from resnet_det.engine.predictor import Predictor
from resnet_det.errors import DatasetError
from resnet_det.utils.file_io import atomic_write_bytes
from resnet_det.utils.safe_paths import output_path
from resnet_det.utils.visualization import draw_detections

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "file_detections", "infer_images", "infer_video"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}


def file_detections(name: str, detections: Mapping, class_names: Sequence[str]) -> Dict:
    """One image's (or frame's) ``Predictor`` output as a JSON record named ``name``."""
    return {
        "file": name,
        "boxes": [[round(float(v), 2) for v in box] for box in detections["boxes"]],
        "scores": [round(float(s), 4) for s in detections["scores"]],
        "labels": [int(label) for label in detections["labels"]],
        "classes": [class_names[int(label) - 1] for label in detections["labels"]],
    }


def infer_images(predictor: Predictor, paths: Sequence[Path], output: Path, score_thresh: float) -> List[Dict]:
    """Detect on each image, write it drawn into ``output``; return the records of all."""
    results = []
    for path in tqdm(paths, desc="images", unit="img", disable=len(paths) < 2):
        image = read_image(path)
        det = predictor(image)
        drawn = draw_detections(image, det["boxes"], det["labels"], det["scores"], predictor.class_names, score_thresh)
        suffix = path.suffix if path.suffix.lower() in IMAGE_SUFFIXES else ".png"
        ok, encoded = cv2.imencode(suffix, drawn[:, :, ::-1])
        # A plain file name directly in output, replacing (not following) a link of that name.
        atomic_write_bytes(output_path(output, path.stem + suffix), encoded.tobytes())
        results.append(file_detections(path.name, det, predictor.class_names))
    return results


def infer_video(predictor: Predictor, path: Path, output: Path, score_thresh: float) -> List[Dict]:
    """Detect on every frame, write the drawn video into ``output``; return a record per frame."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DatasetError(f"cannot open video {path}: check the file, or convert it to mp4 (H.264)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    out_path = output_path(output, f"{path.stem}_detections.mp4")
    writer = None
    results = []
    try:
        for index in tqdm(range(frames) if frames else iter(int, 1), desc="frames", unit="frame", total=frames):
            ok, bgr = capture.read()
            if not ok:
                break
            rgb = bgr[:, :, ::-1].copy()
            det = predictor(rgb)
            drawn = draw_detections(
                rgb, det["boxes"], det["labels"], det["scores"], predictor.class_names, score_thresh
            )
            if writer is None:
                h, w = drawn.shape[:2]
                writer = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            writer.write(drawn[:, :, ::-1])
            results.append(file_detections(f"{path.name}#{index}", det, predictor.class_names))
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    return results
