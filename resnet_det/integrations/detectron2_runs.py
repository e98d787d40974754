"""detectron2 checkpoints to our run folders and back (what ``tools/convert_weights.py`` does).

In: a detectron2 config (read by detectron2's own ``get_cfg``, so ``_BASE_`` and its defaults
resolve as they do there) and its checkpoint become a run folder, ``config.yaml`` and
``model_final.pth``, which ``eval.py --run`` and ``infer.py --run`` rebuild as they rebuild ours.
Out: a run folder of ours becomes ``model_final.pkl`` (the model zoo's format) and the detectron2
``config.yaml`` that builds the same detector, with ``MODEL.WEIGHTS`` pointing at it.
"""

import logging
from pathlib import Path
from typing import Dict, List, Tuple

import yaml
from omegaconf import OmegaConf

from resnet_det.config import DetectionConfig, load_config, save_config
from resnet_det.engine.checkpoint import Checkpointer
from resnet_det.engine.predictor import load_detector
from resnet_det.errors import CheckpointError, ConfigError
from resnet_det.integrations import require_detectron2
from resnet_det.integrations.detectron2_weights import (
    config_from_detectron2,
    detectron2_to_ours,
    ours_to_detectron2,
    read_detectron2_checkpoint,
    write_detectron2_checkpoint,
)
from resnet_det.modeling import build_detector
from resnet_det.modeling.detector import anchor_sizes
from resnet_det.utils.file_io import atomic_write_text

logger = logging.getLogger(__name__)

D2_CHECKPOINT = "model_final.pkl"
D2_CONFIG = "config.yaml"


def read_detectron2_config(path: Path):
    """detectron2's ``CfgNode`` of ``path``, with its bases and defaults (needs detectron2)."""
    require_detectron2("--from detectron2")
    from detectron2.config import get_cfg

    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file; give the detectron2 YAML the checkpoint was trained with")
    cfg = get_cfg()
    try:
        cfg.merge_from_file(str(path))
    except (KeyError, ValueError, AssertionError, OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--config {path} is not a detectron2 config: {str(e).splitlines()[0]}") from None
    return cfg


def _class_names(d2cfg, num_classes: int) -> Tuple[List[str], Dict[int, int]]:
    """Class names and COCO-style category ids from detectron2's metadata of its first test set;
    ``class_<k>`` (ids 1..K) where that set has none registered."""
    from detectron2.data import MetadataCatalog

    names = list(d2cfg.DATASETS.TEST)
    meta = MetadataCatalog.get(names[0]) if names else None
    classes = list(getattr(meta, "thing_classes", []) or [])
    if len(classes) != num_classes:
        logger.warning(
            "no class names for %d classes in detectron2's metadata of %s: naming them class_1..class_%d",
            num_classes,
            names[0] if names else "DATASETS.TEST (empty)",
            num_classes,
        )
        return [f"class_{k}" for k in range(1, num_classes + 1)], {k: k for k in range(1, num_classes + 1)}
    to_contiguous = dict(getattr(meta, "thing_dataset_id_to_contiguous_id", {}) or {})
    ids = {contiguous + 1: int(dataset_id) for dataset_id, contiguous in to_contiguous.items()}
    return classes, ids or {k: k for k in range(1, num_classes + 1)}


def convert_from_detectron2(config: Path, checkpoint: Path, output: Path) -> Path:
    """A run folder in ``output`` from detectron2's ``config`` and ``checkpoint``; returns the checkpoint."""
    d2cfg = read_detectron2_config(config)
    head, overrides = config_from_detectron2(d2cfg, str(config))
    cfg = load_config(DetectionConfig, None, [*overrides, f"train.output_dir={output}"])
    num_classes = int(cfg.model.num_classes)
    sizes = anchor_sizes(cfg.model.anchors.sizes, 1 if head == "c4" else 5)[0]
    state = detectron2_to_ours(
        read_detectron2_checkpoint(checkpoint), head, len(sizes), len(cfg.model.anchors.aspect_ratios), str(checkpoint)
    )
    model = build_detector(cfg, num_classes)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{checkpoint} does not fit the detector of {config}: missing {', '.join(missing[:3]) or 'none'}, "
            f"not used {', '.join(result.unexpected_keys[:3]) or 'none'}"
        )
    classes, category_ids = _class_names(d2cfg, num_classes)
    fmt = model.backbone_input_format
    meta = {
        "kind": "detection",
        "arch": cfg.model.backbone.name,
        "head": head,
        "num_classes": num_classes,
        "class_names": classes,
        "label_to_category_id": category_ids,
        "input_format": fmt.to_dict(),
        "train_datasets": list(d2cfg.DATASETS.TRAIN),
        "converted_from": {"detectron2_config": str(config), "checkpoint": str(checkpoint)},
    }
    output.mkdir(parents=True, exist_ok=True)
    save_config(cfg, output / "config.yaml")
    text = OmegaConf.to_yaml(cfg, resolve=True)
    return Checkpointer(output, is_main=True).save_final({"model": model.state_dict(), "config": text, "meta": meta})


def _stride_in_1x1(model) -> bool:
    """Where the built trunk's bottlenecks stride: read from the modules, not the config, whose
    ``stride_in_1x1`` may have followed weights that are no longer given."""
    trunk = model.backbone.bottom_up if hasattr(model.backbone, "bottom_up") else model.backbone
    return trunk.layer2[0].conv1.stride == (2, 2)


def detectron2_config_from_ours(cfg, meta: Dict, weights: Path, stride_in_1x1: bool) -> Dict:
    """The detectron2 config keys that build ``cfg``'s detector (``MODEL.WEIGHTS`` = ``weights``);
    what detectron2 cannot express is an error, and what it computes slightly differently a warning."""
    backbone, head, model_cfg = cfg.model.backbone, cfg.model.head, cfg.model
    depth = int(backbone.name[1:]) if backbone.name[:1] == "r" and backbone.name[1:].isdigit() else None
    if depth not in (18, 34, 50, 101, 152) or (backbone.shortcut or "B") != "B" or backbone.norm == "gn":
        raise ConfigError(
            f"model.backbone.name={backbone.name}, shortcut={backbone.shortcut}, norm={backbone.norm}: detectron2's "
            "ResNet is r18..r152 with shortcut B and a batch norm; plain nets, shortcuts A/C and GroupNorm do not export"
        )
    if head == "c4" and depth in (18, 34):
        raise ConfigError(
            f"model.head=c4 with {backbone.name}: detectron2's Res5ROIHeads builds bottleneck blocks only"
        )
    differ = []
    if model_cfg.anchors.round:
        differ.append("model.anchors.round=true (detectron2's are unrounded)")
    if head == "fpn" and not model_cfg.anchors.nominal_strides:
        differ.append("model.anchors.nominal_strides=false (p6 differs on sides that are not multiples of 64)")
    if model_cfg.roi_heads.min_box_size > 0:
        differ.append("model.roi_heads.min_box_size>0 (detectron2 keeps detections of any size)")
    if differ:
        logger.warning("detectron2 computes these differently, detections will differ a little: %s", "; ".join(differ))
    fmt = meta["input_format"]
    rpn, roi = model_cfg.rpn, model_cfg.roi_heads
    pooler = {(True, True): "ROIAlignV2", (True, False): "ROIAlign"}.get(
        (roi.pooler == "roi_align", bool(roi.pooler_aligned)), "ROIPool"
    )
    sizes = anchor_sizes(model_cfg.anchors.sizes, 1 if head == "c4" else 5)
    fpn = head == "fpn"
    return {
        "MODEL": {
            "META_ARCHITECTURE": "GeneralizedRCNN",
            "WEIGHTS": str(weights),
            "MASK_ON": False,
            "PIXEL_MEAN": list(fmt["pixel_mean"]),
            "PIXEL_STD": list(fmt["pixel_std"]),
            "BACKBONE": {
                "NAME": "build_resnet_fpn_backbone" if fpn else "build_resnet_backbone",
                "FREEZE_AT": int(backbone.freeze_at),
            },
            "RESNETS": {
                "DEPTH": depth,
                "OUT_FEATURES": ["res2", "res3", "res4", "res5"] if fpn else ["res4"],
                "NORM": "FrozenBN",
                "STRIDE_IN_1X1": bool(stride_in_1x1),
                "RES2_OUT_CHANNELS": 64 if depth in (18, 34) else 256,
            },
            **(
                {"FPN": {"IN_FEATURES": ["res2", "res3", "res4", "res5"], "OUT_CHANNELS": int(model_cfg.fpn_channels)}}
                if fpn
                else {}
            ),
            "ANCHOR_GENERATOR": {
                "SIZES": [list(level) for level in sizes],
                "ASPECT_RATIOS": [[float(a) for a in model_cfg.anchors.aspect_ratios]],
                "OFFSET": 0.0,
            },
            "RPN": {
                "IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"] if fpn else ["res4"],
                "PRE_NMS_TOPK_TRAIN": int(rpn.pre_nms_topk_train),
                "PRE_NMS_TOPK_TEST": int(rpn.pre_nms_topk_test),
                "POST_NMS_TOPK_TRAIN": int(rpn.post_nms_topk_train),
                "POST_NMS_TOPK_TEST": int(rpn.post_nms_topk_test),
                "NMS_THRESH": float(rpn.nms_thresh),
                "IOU_THRESHOLDS": [float(rpn.bg_iou_thresh), float(rpn.fg_iou_thresh)],
                "BATCH_SIZE_PER_IMAGE": int(rpn.batch_size_per_image),
                "POSITIVE_FRACTION": float(rpn.positive_fraction),
                "BBOX_REG_WEIGHTS": [float(w) for w in rpn.box_reg_weights],
            },
            "ROI_HEADS": {
                "NAME": "StandardROIHeads" if fpn else "Res5ROIHeads",
                "IN_FEATURES": ["p2", "p3", "p4", "p5"] if fpn else ["res4"],
                "NUM_CLASSES": int(meta["num_classes"]),
                "SCORE_THRESH_TEST": float(roi.score_thresh),
                "NMS_THRESH_TEST": float(roi.nms_thresh),
                "BATCH_SIZE_PER_IMAGE": int(roi.batch_size_per_image),
                "POSITIVE_FRACTION": float(roi.positive_fraction),
                "IOU_THRESHOLDS": [float(roi.fg_iou_thresh)],
            },
            "ROI_BOX_HEAD": {
                **({"NAME": "FastRCNNConvFCHead", "NUM_FC": 2, "FC_DIM": int(roi.fc_dim)} if fpn else {}),
                "POOLER_TYPE": pooler,
                "POOLER_RESOLUTION": int(roi.pooler_resolution),
                "POOLER_SAMPLING_RATIO": int(roi.sampling_ratio),
                "BBOX_REG_WEIGHTS": [float(w) for w in roi.box_reg_weights],
            },
        },
        "INPUT": {
            "FORMAT": fmt["channel_order"],
            "MIN_SIZE_TRAIN": [int(s) for s in cfg.input.min_size_train],
            "MAX_SIZE_TRAIN": int(cfg.input.max_size_train),
            "MIN_SIZE_TEST": int(cfg.input.min_size_test),
            "MAX_SIZE_TEST": int(cfg.input.max_size_test),
        },
        "TEST": {"DETECTIONS_PER_IMAGE": int(roi.detections_per_image)},
    }


def convert_to_detectron2(run: Path, output: Path) -> Tuple[Path, Path]:
    """``model_final.pkl`` and ``config.yaml`` for detectron2 in ``output``, from our run folder ``run``."""
    loaded = load_detector(run=run)
    cfg, meta = loaded.cfg, loaded.meta
    head = cfg.model.head
    if head not in ("c4", "fpn"):
        raise ConfigError(f"--run {run}: model.head={head}; detectron2 has counterparts of the c4 and fpn heads only")
    weights = output / D2_CHECKPOINT
    d2 = detectron2_config_from_ours(cfg, meta, weights, _stride_in_1x1(loaded.model))
    sizes = anchor_sizes(cfg.model.anchors.sizes, 1 if head == "c4" else 5)[0]
    state = ours_to_detectron2(loaded.model.state_dict(), head, len(sizes), len(cfg.model.anchors.aspect_ratios))
    output.mkdir(parents=True, exist_ok=True)
    write_detectron2_checkpoint(state, weights)
    config = output / D2_CONFIG
    atomic_write_text(config, yaml.safe_dump(d2, sort_keys=False))
    return weights, config
