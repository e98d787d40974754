"""The data-scale benchmark: what loading a COCO-sized (or larger) annotation file costs.

``bench_data_scale`` writes a seeded COCO-like file (``write_coco_like``: COCO's fields, boxes
spread over the images, polygons of 12 points or simple boxes), with the images as hard links to
one tiny PNG (the missing-image check finds them), then measures in fresh processes, so that one
measure's memory does not leak into the next:

- ``load_s``, ``peak_rss_mb``: ``get_dataset`` on it with an empty records cache (parse, check,
  compact, write the cache); the peak is the process's ``VmHWM``, the Python and torch imports
  (``baseline_rss_mb``) included;
- ``records_mb``: the bytes of the ``RecordStore``'s columns;
- ``worker_growth_mb``: the largest growth of a DataLoader worker's private memory (USS:
  ``Private_Clean + Private_Dirty`` of ``/proc/<pid>/smaps_rollup``) from its start to the end of
  a full pass over the training records with 4 workers; the images are not decoded (a fixed 8x8
  image), so the growth is what reading the records costs;
- ``cached_load_s``: ``get_dataset`` again in a new process, from the cache.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import orjson

from resnet_det.data.build import DetectionTrainDataset, freeze_for_workers
from resnet_det.data.transforms import TrainAugmentation

COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
_POLYGON_POINTS = 12
_CHUNK = 20_000
_LINKS_PER_FILE = 60_000


def write_coco_like(path: Path, images: int, boxes: int, polygons: bool = True, seed: int = 0) -> Path:
    """A COCO instances file of ``images`` images and ``boxes`` boxes (1 % crowd, with RLE counts),
    written in chunks so that it never is in memory whole."""
    rng = np.random.default_rng(seed)
    owner = np.sort(rng.integers(0, images, boxes))
    sizes = rng.choice([(480, 640), (640, 480), (427, 640), (640, 427), (500, 375)], images)
    with open(path, "wb") as f:
        f.write(b'{"info":{"description":"resnet-det data-scale benchmark","year":2026},"licenses":[],"images":[')
        for start in range(0, images, _CHUNK):
            chunk = [
                {
                    "license": 1,
                    "file_name": f"{i:012d}.jpg",
                    "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg",
                    "height": int(sizes[i, 0]),
                    "width": int(sizes[i, 1]),
                    "date_captured": "2013-11-14 11:18:45",
                    "id": i + 1,
                }
                for i in range(start, min(start + _CHUNK, images))
            ]
            f.write((b"," if start else b"") + orjson.dumps(chunk)[1:-1])
        f.write(b'],"annotations":[')
        for start in range(0, boxes, _CHUNK):
            idx = owner[start : start + _CHUNK]
            h, w = sizes[idx, 0].astype(float), sizes[idx, 1].astype(float)
            x, y = rng.uniform(0, w * 0.8), rng.uniform(0, h * 0.8)
            bw, bh = rng.uniform(1, w - x), rng.uniform(1, h - y)
            cats = rng.choice(COCO_CATEGORY_IDS, len(idx))
            crowd = rng.random(len(idx)) < 0.01
            boxes_xywh = np.round(np.stack([x, y, bw, bh], 1), 2).tolist()
            if polygons:
                t = rng.uniform(0, 2 * np.pi, (len(idx), _POLYGON_POINTS))
                px = np.round(x[:, None] + bw[:, None] * (0.5 + 0.5 * np.cos(t)), 2)
                py = np.round(y[:, None] + bh[:, None] * (0.5 + 0.5 * np.sin(t)), 2)
                polys = np.stack([px, py], 2).reshape(len(idx), -1).tolist()
            chunk = []
            for k in range(len(idx)):
                ann = {
                    "area": round(boxes_xywh[k][2] * boxes_xywh[k][3], 2),
                    "iscrowd": int(crowd[k]),
                    "image_id": int(idx[k]) + 1,
                    "bbox": boxes_xywh[k],
                    "category_id": int(cats[k]),
                    "id": start + k + 1,
                }
                if polygons:
                    ann["segmentation"] = (
                        {"counts": [int(v) for v in rng.integers(1, 400, 40)], "size": [int(h[k]), int(w[k])]}
                        if crowd[k]
                        else [polys[k]]
                    )
                chunk.append(ann)
            f.write((b"," if start else b"") + orjson.dumps(chunk)[1:-1])
        categories = [{"supercategory": "thing", "id": c, "name": f"class{c}"} for c in COCO_CATEGORY_IDS]
        f.write(b'],"categories":' + orjson.dumps(categories) + b"}")
    return path


def link_images(folder: Path, images: int) -> Path:
    """``folder`` holding the images of ``write_coco_like`` as hard links to a few 8x8 PNGs
    (a filesystem allows some 65,000 links to one file)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    _, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    for i in range(images):
        if i % _LINKS_PER_FILE == 0:
            first = folder / f"{i:012d}.jpg"
            first.write_bytes(png.tobytes())
        else:
            os.link(first, folder / f"{i:012d}.jpg")
    return folder


def private_mb(pid: int) -> float:
    """A process's unique set size (USS) in MB: the pages no other process maps."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":"):
            fields[parts[0][:-1]] = parts[1]
    return (int(fields["Private_Clean"]) + int(fields["Private_Dirty"])) / 1024


def _record_worker_start(folder: str) -> Callable[[int], None]:
    def init(worker_id: int) -> None:
        Path(folder, f"{worker_id}.start").write_text(f"{os.getpid()} {private_mb(os.getpid())}")

    return init


def _count(batch: list) -> int:
    return len(batch)


def worker_growth_mb(dataset, keys: Sequence, workers: int = 4, batch_size: int = 256) -> float:
    """The largest growth of a worker's USS from its start to the end of one pass over ``keys``."""
    from torch.utils.data import DataLoader

    freeze_for_workers()  # as the project's loaders do (loader_options)
    with tempfile.TemporaryDirectory() as folder:
        batches = [list(keys[i : i + batch_size]) for i in range(0, len(keys), batch_size)]
        loader = DataLoader(
            dataset,
            batch_sampler=batches,
            collate_fn=_count,
            num_workers=workers,
            persistent_workers=True,
            worker_init_fn=_record_worker_start(folder),
        )
        iterator = iter(loader)
        seen = sum(iterator)
        if seen != len(keys):
            raise RuntimeError(f"the pass read {seen} of {len(keys)} samples")
        growth = []
        for start in Path(folder).glob("*.start"):
            pid, before = start.read_text().split()
            growth.append(private_mb(int(pid)) - float(before))
        del iterator, loader
    return max(growth)


class UndecodedTrainDataset(DetectionTrainDataset):
    """The training dataset with every image a fixed 8x8 one: a pass over it reads only the records."""

    image = np.zeros((8, 8, 3), np.uint8)

    def __init__(self, records):
        super().__init__(records, TrainAugmentation((8,), 16, 0.5))

    def _read(self, index):
        return self.image


def _vm_kb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return float("nan")


def _child(args: dict) -> dict:
    """One measure in this (fresh) process; see the module doc."""
    baseline = _vm_kb("VmRSS") / 1024
    from resnet_det.data import get_dataset, register_coco_instances
    from resnet_det.data.build import train_records

    register_coco_instances("data_scale", args["images_dir"], args["annotations"])
    baseline = max(baseline, _vm_kb("VmRSS") / 1024)  # after the imports
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (Linux)
    start = time.perf_counter()
    store, _ = get_dataset("data_scale")
    out = {"load_s": time.perf_counter() - start, "peak_rss_mb": _vm_kb("VmHWM") / 1024}
    out.update(baseline_rss_mb=baseline, records_mb=store.nbytes / 2**20, images=len(store))
    if args["workers"]:
        train = train_records(store)
        keys = [(i, i) for i in range(len(train))]
        out["worker_growth_mb"] = worker_growth_mb(UndecodedTrainDataset(train), keys, args["workers"])
    return out


def _run_child(args: dict, env: dict) -> dict:
    code = "import json, sys; from resnet_det.engine.data_scale import _child; print(json.dumps(_child(json.loads(sys.argv[1]))))"
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"data-scale measure failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_data_scale(
    images: int, boxes: int, polygons: bool = True, workers: int = 4, folder: Optional[Path] = None, log=print
) -> Dict[str, float]:
    """The ``data-scale/*`` figures (module doc) for a generated file of ``images`` and ``boxes``."""
    own = folder is None
    folder = Path(tempfile.mkdtemp(prefix="resnet_det_data_scale_")) if folder is None else Path(folder)
    try:
        annotations = folder / "instances.json"
        start = time.perf_counter()
        write_coco_like(annotations, images, boxes, polygons)
        link_images(folder / "images", images)
        log(
            f"  generated {annotations} ({annotations.stat().st_size / 1e6:.0f} MB, {images} images, {boxes} boxes"
            f"{', polygons' if polygons else ''}) in {time.perf_counter() - start:.0f} s"
        )
        env = {**os.environ, "RESNET_DET_CACHE": str(folder / "cache")}
        args = {"annotations": str(annotations), "images_dir": str(folder / "images"), "workers": workers}
        first = _run_child(args, env)
        second = _run_child({**args, "workers": 0}, env)
        result = {k: first[k] for k in ("load_s", "peak_rss_mb", "records_mb", "baseline_rss_mb")}
        result.update(worker_growth_mb=first.get("worker_growth_mb", float("nan")), cached_load_s=second["load_s"])
        result["cached_peak_rss_mb"] = second["peak_rss_mb"]
        result["file_mb"] = annotations.stat().st_size / 1e6
        return result
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)


FIGURE_UNITS = {
    "load_s": "s",
    "peak_rss_mb": "MB",
    "records_mb": "MB",
    "worker_growth_mb": "MB",
    "cached_load_s": "s",
    "cached_peak_rss_mb": "MB",
    "baseline_rss_mb": "MB",
    "file_mb": "MB",
}
