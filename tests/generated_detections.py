"""Detections generated from a COCO ground truth, with every kind of error in known numbers.

For the tests that need a real results file (the TIDE comparison with tidecv, the backend
parity): true positives, localisation, classification, both, duplicate and background errors,
and misses, on the real boxes of ``../shared/data/coco_mini``. No detection comes near a crowd
region, where tidecv and we treat detections differently on purpose (see evaluation/tide.py).
"""

import numpy as np

from resnet_det.evaluation.matching import box_iou


def generated_detections(gt: dict, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    present = sorted({a["category_id"] for a in gt["annotations"] if not a.get("iscrowd", 0)})
    crowd = {}
    for a in gt["annotations"]:
        if a.get("iscrowd", 0):
            crowd.setdefault(a["image_id"], []).append(a["bbox"])
    sizes = {im["id"]: (im["width"], im["height"]) for im in gt["images"]}
    dets = []

    def add(ann, box, category_id, score):
        dets.append({"image_id": ann["image_id"], "category_id": int(category_id), "bbox": box, "score": score})

    for ann in gt["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = ann["bbox"]
        kind = rng.choice(["tp", "tp", "tp", "loc", "cls", "both", "dupe", "miss"])
        score = float(rng.uniform(0.05, 1.0))
        other = int(rng.choice([c for c in present if c != ann["category_id"]]))
        jitter = [x + rng.uniform(-0.05, 0.05) * w, y + rng.uniform(-0.05, 0.05) * h, w, h]
        shifted = [x + rng.uniform(0.45, 0.6) * w, y + rng.uniform(0.3, 0.4) * h, w, h]
        if kind in ("tp", "dupe"):
            add(ann, jitter, ann["category_id"], score)
        if kind == "dupe":
            add(ann, [x + rng.uniform(-0.05, 0.05) * w, y, w, h], ann["category_id"], score * 0.9)
        if kind == "loc":
            add(ann, shifted, ann["category_id"], score)
        if kind == "cls":
            add(ann, jitter, other, score)
        if kind == "both":
            add(ann, shifted, other, score)
    for image_id, (width, height) in sizes.items():
        for _ in range(int(rng.integers(0, 3))):  # background boxes
            w, h = rng.uniform(8, width / 4), rng.uniform(8, height / 4)
            box = [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]
            add({"image_id": image_id}, box, rng.choice(present), float(rng.uniform(0.05, 1.0)))
    return [
        d for d in dets
        if d["image_id"] not in crowd or box_iou([d["bbox"]], crowd[d["image_id"]], crowd=True).max() < 0.05
    ]  # fmt: skip


if __name__ == "__main__":  # python tests/generated_detections.py GT.json OUT.json [SEED]: the README's example
    import json
    import sys

    gt_file, out_file = sys.argv[1:3]
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    with open(gt_file) as f:
        dets = generated_detections(json.load(f), seed)
    with open(out_file, "w") as f:
        json.dump(dets, f)
