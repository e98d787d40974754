"""The data doctor (``tools/check_data.py``): what is wrong with a data set, before training finds out.

A data set is read as training reads it (its format's reader and the sanitizer), but with every
bad-record policy at "count and go on", so that one run lists every flaw with its count instead
of stopping at the first. Then each image file is read once (its bytes: a hash for duplicates,
the header for the real size, decoded only when the header does not say) and the boxes are
compared with the anchors of the chosen recipe at the scale training resizes to.

Anchor cover is the best case: an anchor centred on the box (the real grid is a stride apart),
of every size and aspect ratio of ``model.anchors`` (torchvision's ratio is height / width), at
the training scale of the middle ``input.min_size_train``; a box no anchor meets at IoU >= 0.5
can only be found by the RPN's regression from a poorer match.

The report is a dict (``data_report.json``; ``data_report.md`` reads it), whose ``checks`` name
each flaw with its ``count``, a ``level`` (error: training goes wrong; warning: worth a look) and
a message saying the fix; the plots are PNG files beside it.
"""

import hashlib
import json
import logging
import math
import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from resnet_det.config import DetectionConfig, load_config
from resnet_det.data.catalog import get_dataset, register_from_config
from resnet_det.data.image_io import header_size
from resnet_det.data.sanitize import BadRecordPolicy, RecordSanitizer
from resnet_det.data.transforms import resize_scale
from resnet_det.utils.file_io import atomic_write_text

logger = logging.getLogger(__name__)

# Every kind of bad record is counted and the reading goes on (boxes outside are clipped, counted).
DOCTOR_POLICY = BadRecordPolicy(
    bad_boxes="skip", boxes_outside="fix", unknown_category="skip", missing_image="skip", corrupt_image="skip"
)
COVER_IOU = 0.5
BACKGROUND_NAMES = {"background", "bg", "backgroundclass"}  # as normalised_name leaves them
_EXAMPLES = 5


class WatchingSanitizer(RecordSanitizer):
    """The doctor's sanitizer: also keeps the categories of boxes outside the class list."""

    def __init__(self):
        super().__init__(DOCTOR_POLICY)
        self.unknown: Counter = Counter()

    def unknown_category(self, where: str, category) -> None:
        self.unknown[category] += 1
        super().unknown_category(where, category)


def config_and_datasets(target: str, config: Optional[str], overrides: Sequence[str]) -> Tuple[object, List[str]]:
    """What a data tool's ``target`` names: a config file (its train and test sets, the config
    itself), or a data set (with ``config``, default the schema's, for the anchors and sizes)."""
    is_config = target.endswith((".yaml", ".yml")) and os.path.isfile(target)
    cfg = load_config(DetectionConfig, target if is_config else config, list(overrides))
    register_from_config(cfg.datasets)
    names = list(dict.fromkeys([*cfg.datasets.train, *cfg.datasets.test])) if is_config else [target]
    return cfg, names


def anchor_shapes(sizes: Sequence[Sequence[int]], ratios: Sequence[float]) -> np.ndarray:
    """``A x 2`` (width, height) of every anchor size and ratio (height / width, torchvision's)."""
    flat = sorted({float(s) for level in sizes for s in level})
    return np.array([(s / math.sqrt(r), s * math.sqrt(r)) for s in flat for r in ratios], dtype=np.float64)


def best_anchor_iou(boxes_wh: np.ndarray, anchors_wh: np.ndarray) -> np.ndarray:
    """For each ``(w, h)`` the best IoU with any anchor of the same centre."""
    if not len(boxes_wh):
        return np.zeros(0)
    w, h = boxes_wh[:, None, 0], boxes_wh[:, None, 1]
    aw, ah = anchors_wh[None, :, 0], anchors_wh[None, :, 1]
    inter = np.minimum(w, aw) * np.minimum(h, ah)
    return (inter / (w * h + aw * ah - inter)).max(axis=1)


def normalised_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name).lower())


def _check(checks: list, name: str, count: int, level: str, message: str, examples: Sequence = ()) -> None:
    if count:
        checks.append(
            {
                "name": name,
                "count": int(count),
                "level": level,
                "message": message,
                "examples": [e for e in examples if e][:_EXAMPLES],
            }
        )


def _read_files(records: Sequence[dict]) -> Tuple[Dict[str, List[str]], List[str], List[str]]:
    """Duplicate groups (sha1 -> files, only groups of 2 or more), the size mismatches, and the
    files that neither have a header that says their size nor decode."""
    by_hash = defaultdict(list)
    mismatched, undecodable = [], []
    for record in records:
        data = np.fromfile(record["file_name"], dtype=np.uint8)
        by_hash[hashlib.sha1(data.tobytes()).hexdigest()].append(record["file_name"])
        size = header_size(data)
        if size is None:
            image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
            if image is None:
                undecodable.append(record["file_name"])
                continue
            size = (image.shape[1], image.shape[0])
        if tuple(size) != (record["width"], record["height"]):
            mismatched.append(
                f"{record['file_name']}: {size[0]}x{size[1]}, annotated {record['width']}x{record['height']}"
            )
    return {h: files for h, files in by_hash.items() if len(files) > 1}, mismatched, undecodable


def diagnose(name: str, cfg, rare: int = 10) -> Tuple[dict, dict]:
    """The report of dataset ``name`` (registered) against config ``cfg``, and the arrays to plot."""
    sanitizer = WatchingSanitizer()
    records, metadata = get_dataset(name, root=cfg.datasets.root, sanitizer=sanitizer)
    class_names = list(metadata["class_names"])
    num_classes = len(class_names)
    bad = sanitizer.report
    checks: list = []

    boxes_per_class = Counter(a["label"] for r in records for a in r["annotations"])
    images_per_class = Counter(label for r in records for label in {a["label"] for a in r["annotations"]})
    objects = [len(r["annotations"]) for r in records]
    classes = [
        {"label": k, "name": n, "boxes": boxes_per_class[k], "images": images_per_class[k]}
        for k, n in enumerate(class_names, start=1)
    ]

    empty = [r["file_name"] for r in records if not r["annotations"]]
    _check(checks, "empty_images", len(empty), "warning",
           "images without any box: fine as negatives, wrong if their labels were lost "
           "(training leaves them out)", empty)  # fmt: skip
    duplicates, mismatched, undecodable = _read_files(records)
    groups = list(duplicates.values())
    _check(checks, "duplicate_images", sum(len(g) - 1 for g in groups), "warning",
           "images with the same bytes as another (counted beyond the first of each group): remove the copies, "
           "or a split leaks into another", [" = ".join(g) for g in groups])  # fmt: skip
    outside = bad["boxes_outside fixed"] + bad["boxes_outside skipped"]
    _check(checks, "boxes_outside", outside, "warning",
           "boxes beyond the image (clipped, or dropped when wholly outside): check the box convention "
           "(x, y, w, h vs x0, y0, x1, y1; 0- vs 1-based; normalised or not)",
           [bad.examples[k] for k in ("boxes_outside fixed", "boxes_outside skipped") if k in bad.examples])  # fmt: skip
    _check(checks, "degenerate_boxes", bad["bad_boxes skipped"], "error",
           "boxes with no area or non-finite coordinates (dropped)", [bad.examples.get("bad_boxes skipped", "")])  # fmt: skip
    _check(checks, "missing_images", bad["missing_image skipped"], "error",
           "annotated images that are not there", [bad.examples.get("missing_image skipped", "")])  # fmt: skip
    _check(checks, "corrupt_images", bad["corrupt_image skipped"] + len(undecodable), "error",
           "images that cannot be decoded (training stops on them, or skips them with "
           "datasets.corrupt_image=skip)", [bad.examples.get("corrupt_image skipped", ""), *undecodable])  # fmt: skip
    _check(checks, "size_mismatch", len(mismatched), "warning",
           "images whose real size differs from the annotation's (training uses the real size and clips "
           "the boxes to it: rotated or resized after labelling?)", mismatched)  # fmt: skip

    _check(checks, "labels_beyond_class_list", sum(sanitizer.unknown.values()), "error",
           f"boxes whose class is not among the {num_classes} classes (dropped): "
           f"{', '.join(f'{c!r} x{n}' for c, n in sanitizer.unknown.most_common(_EXAMPLES))}; "
           "add the class, or fix the labels", [bad.examples.get("unknown_category skipped", "")])  # fmt: skip
    absent = [c["name"] for c in classes if c["boxes"] == 0]
    _check(checks, "absent_classes", len(absent), "error",
           "classes without a single box: the model cannot learn them (a forgotten class list, or a "
           "list in another order?)", absent)  # fmt: skip
    few = [f"{c['name']} ({c['boxes']})" for c in classes if 0 < c["boxes"] < rare]
    _check(checks, "rare_classes", len(few), "warning", f"classes with fewer than {rare} boxes", few)
    similar = defaultdict(list)
    for n in class_names:
        similar[normalised_name(n)].append(n)
    lookalikes = [" / ".join(g) for g in similar.values() if len(g) > 1]
    _check(checks, "similar_class_names", sum(len(g.split(" / ")) - 1 for g in lookalikes), "error",
           "class names that differ only in case or spacing: one class split in two; fix the labels", lookalikes)  # fmt: skip

    wanted = cfg.model.num_classes
    off_by_one = []
    if class_names and normalised_name(class_names[0]) in BACKGROUND_NAMES:
        off_by_one.append(
            f"class 1 is named {class_names[0]!r}: resnet-det adds the background itself; remove it from the list"
        )
    if wanted is not None and wanted == num_classes + 1:
        off_by_one.append(f"model.num_classes={wanted} counts the background: set {num_classes} (or null)")
    if metadata.get("format") == "yolo" and sanitizer.unknown.get(num_classes) and not boxes_per_class[1]:
        off_by_one.append(
            f"YOLO class id {num_classes} is used and id 0 never: the ids look 1-based; YOLO's start at 0"
        )
    _check(checks, "background_off_by_one", len(off_by_one), "error", "; ".join(off_by_one), off_by_one)
    if wanted is not None and wanted != num_classes:
        _check(checks, "num_classes_mismatch", 1, "error",
               f"model.num_classes={wanted} but the data set has {num_classes} classes: set it to "
               f"{num_classes}, or null to take it from the data")  # fmt: skip

    anchors = anchor_shapes(cfg.model.anchors.sizes, cfg.model.anchors.aspect_ratios)
    min_sizes = sorted(int(s) for s in cfg.input.min_size_train)
    min_size = min_sizes[len(min_sizes) // 2]
    wh = []
    for r in records:
        scale = resize_scale(r["height"], r["width"], min_size, int(cfg.input.max_size_train))
        boxes = [a["bbox"] for a in r["annotations"] if not a["iscrowd"]]  # crowd regions are not trained on
        wh += [((x1 - x0) * scale, (y1 - y0) * scale) for x0, y0, x1, y1 in boxes]
    boxes_wh = np.array(wh, dtype=np.float64).reshape(-1, 2)
    iou = best_anchor_iou(boxes_wh, anchors)
    uncovered = int((iou < COVER_IOU).sum())
    share = uncovered / len(iou) if len(iou) else 0.0
    _check(checks, "boxes_no_anchor_covers", uncovered, "warning" if share < 0.05 else "error",
           f"{100 * share:.1f}% of the boxes meet no anchor at IoU >= {COVER_IOU} at the training scale "
           f"(min_size {min_size}): add anchor sizes or ratios (model.anchors) that fit them")  # fmt: skip

    def quantiles(values) -> Optional[dict]:
        if not len(values):
            return None
        q = np.percentile(values, [0, 5, 50, 95, 100])
        return dict(zip(("min", "p5", "median", "p95", "max"), (round(float(v), 3) for v in q)))

    report = {
        "dataset": name,
        "format": metadata.get("format", metadata.get("evaluator")),
        "num_images": len(records),
        "num_objects": int(sum(objects)),
        "num_crowd_regions": sum(a["iscrowd"] for r in records for a in r["annotations"]),
        "objects_per_image": {
            "mean": round(float(np.mean(objects)), 3) if objects else 0.0,
            **(quantiles(objects) or {}),
        },
        "num_classes": num_classes,
        "config_num_classes": wanted,
        "classes": classes,
        "box_size_at_training_scale": quantiles(np.sqrt(boxes_wh.prod(axis=1))),
        "box_aspect_ratio_h_over_w": quantiles(boxes_wh[:, 1] / boxes_wh[:, 0]) if len(boxes_wh) else None,
        "anchors": {
            "sizes": [list(map(int, s)) for s in cfg.model.anchors.sizes],
            "aspect_ratios": list(map(float, cfg.model.anchors.aspect_ratios)),
            "training_min_size": min_size,
            "share_of_boxes_no_anchor_covers": round(share, 4),
        },
        "checks": checks,
        "bad_records": bad.to_dict(),
    }
    return report, {"objects": objects, "boxes_wh": boxes_wh, "covered": iou >= COVER_IOU, "anchors": anchors}


def markdown(report: dict) -> str:
    """The report as Markdown: the numbers, the flaws, the class counts."""
    a = report["anchors"]
    lines = [
        f"# Data report: {report['dataset']} ({report['format']})",
        "",
        f"- images: {report['num_images']}, objects: {report['num_objects']}, "
        f"objects per image: mean {report['objects_per_image']['mean']}, max {report['objects_per_image'].get('max', 0):g}; "
        f"crowd regions: {report['num_crowd_regions']}",
        f"- classes: {report['num_classes']} (config model.num_classes: {report['config_num_classes']})",
        f"- box size (sqrt of area, px at min_size {a['training_min_size']}): {report['box_size_at_training_scale']}",
        f"- box aspect ratio (h/w): {report['box_aspect_ratio_h_over_w']}",
        f"- anchors {a['sizes']} x ratios {a['aspect_ratios']}: "
        f"{100 * a['share_of_boxes_no_anchor_covers']:.1f}% of the boxes no anchor covers at IoU >= {COVER_IOU}",
        "",
        "## Checks",
        "",
    ]
    if not report["checks"]:
        lines.append("No flaw found.")
    for c in report["checks"]:
        lines.append(f"- **{c['level']}** `{c['name']}`: {c['count']}: {c['message']}")
        lines += [f"  - e.g. {e}" for e in c["examples"] if e]
    lines += ["", "## Classes", "", "| label | name | boxes | images |", "|---|---|---|---|"]
    lines += [f"| {c['label']} | {c['name']} | {c['boxes']} | {c['images']} |" for c in report["classes"]]
    return "\n".join(lines) + "\n"


def plot(report: dict, arrays: dict, folder: Path) -> List[Path]:
    """class_counts.png, objects_per_image.png, box_shapes.png (boxes and anchors, width x height)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def save(fig, name: str) -> Path:
        path = folder / name
        fig.tight_layout()
        FigureCanvasAgg(fig).print_png(str(path))
        return path

    paths = []
    classes = report["classes"]
    fig = Figure(figsize=(6, max(2.5, 0.25 * len(classes) + 1)))
    ax = fig.add_subplot()
    flagged = {n for c in report["checks"] if c["name"] in ("absent_classes", "rare_classes") for n in c["examples"]}
    colours = [
        "tab:red" if c["name"] in flagged or f"{c['name']} ({c['boxes']})" in flagged else "tab:blue" for c in classes
    ]
    ax.barh([c["name"] for c in classes][::-1], [c["boxes"] for c in classes][::-1], color=colours[::-1])
    ax.set_xlabel("boxes (red: absent or rare)")
    ax.set_title(f"{report['dataset']}: boxes per class")
    paths.append(save(fig, "class_counts.png"))

    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot()
    objects = arrays["objects"]
    ax.hist(objects, bins=np.arange(0, max(objects or [0]) + 2) - 0.5, color="tab:blue")
    ax.set_xlabel("objects per image")
    ax.set_ylabel("images")
    ax.set_title(f"{report['num_images']} images, {report['num_objects']} objects")
    paths.append(save(fig, "objects_per_image.png"))

    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    wh, covered, anchors = arrays["boxes_wh"], arrays["covered"], arrays["anchors"]
    ax.scatter(wh[covered, 0], wh[covered, 1], s=6, alpha=0.5, color="tab:blue", label="box an anchor covers")
    ax.scatter(
        wh[~covered, 0],
        wh[~covered, 1],
        s=8,
        alpha=0.8,
        color="tab:red",
        label=f"box no anchor covers (IoU < {COVER_IOU})",
    )
    ax.scatter(anchors[:, 0], anchors[:, 1], marker="x", s=60, color="black", label="anchor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"width (px at min_size {report['anchors']['training_min_size']})")
    ax.set_ylabel("height (px)")
    share = report["anchors"]["share_of_boxes_no_anchor_covers"]
    ax.set_title(f"{report['dataset']}: box shapes vs anchors, {100 * share:.1f}% uncovered")
    ax.legend(loc="upper left", fontsize=8)
    paths.append(save(fig, "box_shapes.png"))
    return paths


def write_report(report: dict, arrays: dict, folder: Path) -> List[Path]:
    """``data_report.json``, ``data_report.md`` and the plots in ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "data_report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(folder / "data_report.md", markdown(report))
    return [folder / "data_report.json", folder / "data_report.md", *plot(report, arrays, folder)]
