"""detectron2's Faster R-CNN (C4 and FPN) and ours: configs and state dicts, both ways.

A detectron2 config maps to ours key by key (``config_from_detectron2``), including what
detectron2 does differently from torchvision's defaults: unrounded anchors, RoIAlignV2, BGR input
with pixel std 1, the stride in the 1x1, its RPN counts and thresholds. The state dicts differ in
names and in three layouts, handled here:

- the class scores: detectron2 puts background last, torchvision first;
- the class-specific box deltas: detectron2 has none for background (a zero row here);
- the RPN's anchors at one location, when there are several sizes per map (C4): detectron2 orders
  them size-major, torchvision aspect-ratio-major.

Reading a detectron2 config needs detectron2 (``get_cfg`` resolves ``_BASE_`` and its defaults);
the state-dict mapping does not.
"""

import json
import pickle
import re
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch

from backbones.serialization import load_pickle, torch_load
from resnet_det.errors import CheckpointError, ConfigError
from resnet_det.utils.file_io import atomic_write_bytes

# (detectron2 name, our name) templates. {r}: res stage (ours layer{r-1}); {f}: FPN level (ours
# block f-2); {n}: detectron2's fc (ours fc{n+5}); {i}, {k}: block and conv indices; {p}: a leaf.
_BLOCK = [
    ("{i}.conv{k}.weight", "{i}.conv{k}.weight"),
    ("{i}.conv{k}.norm.{p}", "{i}.bn{k}.{p}"),
    ("{i}.shortcut.weight", "{i}.downsample.0.weight"),
    ("{i}.shortcut.norm.{p}", "{i}.downsample.1.{p}"),
]
_TRUNK = [("stem.conv1.weight", "conv1.weight"), ("stem.conv1.norm.{p}", "bn1.{p}")] + [
    (f"res{{r}}.{d2}", f"layer{{l}}.{ours}") for d2, ours in _BLOCK
]
_RPN = [
    ("proposal_generator.rpn_head.conv.{p}", "rpn.head.conv.0.0.{p}"),
    ("proposal_generator.rpn_head.objectness_logits.{p}", "rpn.head.cls_logits.{p}"),
    ("proposal_generator.rpn_head.anchor_deltas.{p}", "rpn.head.bbox_pred.{p}"),
]
_PREDICTOR = [("roi_heads.box_predictor.{q}.{p}", "roi_heads.box_predictor.{q}.{p}")]
TEMPLATES = {
    "c4": [(f"backbone.{d2}", f"backbone.{ours}") for d2, ours in _TRUNK]
    + [(f"roi_heads.res5.{d2}", f"roi_heads.box_head.res5.{ours}") for d2, ours in _BLOCK]
    + _RPN
    + _PREDICTOR,
    "fpn": [(f"backbone.bottom_up.{d2}", f"backbone.bottom_up.{ours}") for d2, ours in _TRUNK]
    + [
        ("backbone.fpn_lateral{f}.{p}", "backbone.fpn.inner_blocks.{g}.0.{p}"),
        ("backbone.fpn_output{f}.{p}", "backbone.fpn.layer_blocks.{g}.0.{p}"),
        ("roi_heads.box_head.fc{n}.{p}", "roi_heads.box_head.fc{m}.{p}"),
    ]
    + _RPN
    + _PREDICTOR,
}
# placeholder in detectron2's name -> (its counterpart in ours, our value minus detectron2's)
_OFFSETS = {"r": ("l", -1), "f": ("g", -2), "n": ("m", 5)}
# Buffers detectron2 may save that are not weights (the normalisation is in the config).
_NOT_WEIGHTS = ("pixel_mean", "pixel_std")


def _regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w)\}", template)
    pattern = "".join(re.escape(part) if i % 2 == 0 else rf"(?P<{part}>\w+)" for i, part in enumerate(parts))
    return re.compile(pattern)


def _translate(name: str, head: str, to_ours: bool) -> str:
    """``name`` in the other library's naming; a name no template knows raises ``KeyError``."""
    for d2, ours in TEMPLATES[head]:
        source, target = (d2, ours) if to_ours else (ours, d2)
        match = _regex(source).fullmatch(name)
        if match is None:
            continue
        values = dict(match.groupdict())
        for theirs, (mine, offset) in _OFFSETS.items():
            if to_ours and theirs in values:
                values[mine] = str(int(values[theirs]) + offset)
            elif not to_ours and mine in values:
                values[theirs] = str(int(values[mine]) - offset)
        return target.format(**values)
    raise KeyError(name)


def _anchor_order(num_sizes: int, num_ratios: int) -> torch.Tensor:
    """For each of our anchors at a location (ratio-major), the index of detectron2's (size-major)."""
    return torch.tensor([s * num_ratios + r for r in range(num_ratios) for s in range(num_sizes)])


def _reorder_rpn(key: str, value: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Apply ``order`` to the anchors of the RPN's objectness or box-delta outputs."""
    if key.startswith("rpn.head.cls_logits."):
        return value[order]
    if key.startswith("rpn.head.bbox_pred."):
        return value.reshape(len(order), 4, *value.shape[1:])[order].reshape(value.shape)
    return value


def detectron2_to_ours(
    state: Mapping[str, torch.Tensor], head: str, num_sizes: int, num_ratios: int, source: str
) -> Dict[str, torch.Tensor]:
    """A detectron2 Faster R-CNN state dict in our names and layouts (``head``: ``c4`` or ``fpn``;
    ``num_sizes`` and ``num_ratios``: anchors per location on one feature map)."""
    order = _anchor_order(num_sizes, num_ratios)
    ours, unknown = {}, []
    for key, value in state.items():
        if key in _NOT_WEIGHTS or key.endswith("num_batches_tracked"):
            continue
        try:
            name = _translate(key, head, to_ours=True)
        except KeyError:
            unknown.append(key)
            continue
        ours[name] = _reorder_rpn(name, value, order)
    if unknown:
        raise CheckpointError(
            f"{source}: {len(unknown)} weights that a {head.upper()} Faster R-CNN does not have, e.g. "
            f"{', '.join(unknown[:3])}: give the detectron2 config the checkpoint was trained with"
        )
    _predictor_to_ours(ours, source)
    return ours


def _predictor_to_ours(state: Dict[str, torch.Tensor], source: str) -> None:
    """Background first in the scores; a zero box-delta row for background (and class-agnostic
    deltas repeated for every class, as torchvision's predictor is class-specific)."""
    cls_w, cls_b = state["roi_heads.box_predictor.cls_score.weight"], state["roi_heads.box_predictor.cls_score.bias"]
    num_classes = cls_w.shape[0] - 1
    state["roi_heads.box_predictor.cls_score.weight"] = torch.cat([cls_w[-1:], cls_w[:-1]])
    state["roi_heads.box_predictor.cls_score.bias"] = torch.cat([cls_b[-1:], cls_b[:-1]])
    for leaf in ("weight", "bias"):
        key = f"roi_heads.box_predictor.bbox_pred.{leaf}"
        value = state[key]
        if value.shape[0] == 4:
            value = value.repeat(num_classes, *([1] * (value.dim() - 1)))
        if value.shape[0] != 4 * num_classes:
            raise CheckpointError(
                f"{source}: {key} has {value.shape[0]} rows, not 4 per class ({num_classes} classes) or 4"
            )
        state[key] = torch.cat([torch.zeros_like(value[:4]), value])


def ours_to_detectron2(
    state: Mapping[str, torch.Tensor], head: str, num_sizes: int, num_ratios: int
) -> Dict[str, torch.Tensor]:
    """Our detector's state dict in detectron2's names and layouts (the inverse of ``detectron2_to_ours``)."""
    inverse = torch.argsort(_anchor_order(num_sizes, num_ratios))
    d2 = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        value = _reorder_rpn(key, value, inverse)
        if key.startswith("roi_heads.box_predictor.cls_score."):
            value = torch.cat([value[1:], value[:1]])
        elif key.startswith("roi_heads.box_predictor.bbox_pred."):
            value = value[4:]
        d2[_translate(key, head, to_ours=False)] = value
    return d2


def read_detectron2_checkpoint(path: Path) -> Dict[str, torch.Tensor]:
    """The state dict of a detectron2 checkpoint: the model zoo's ``.pkl`` (``{"model": numpy
    arrays, "__author__": ...}``, read by the numpy-only unpickler) or a ``.pth`` of its trainer."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; give a detectron2 model_final_*.pkl or .pth")
    try:
        content = load_pickle(path, encoding="latin1") if path.suffix == ".pkl" else torch_load(path)
    except (OSError, EOFError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} cannot be read as a detectron2 checkpoint ({type(e).__name__})") from None
    model = content.get("model", content) if isinstance(content, Mapping) else None
    if not isinstance(model, Mapping) or not model:
        raise CheckpointError(f"{path} holds no state dict (a detectron2 checkpoint keeps it under 'model')")
    state = {}
    for key, value in model.items():
        if isinstance(value, np.ndarray):
            value = torch.as_tensor(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {key} is a {type(value).__name__}, not an array")
        state[key] = value
    return state


def write_detectron2_checkpoint(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """``state`` as the model zoo writes it: a pickle of numpy arrays that ``DetectionCheckpointer``
    loads without renaming (``__author__`` marks the zoo's format), and our ``--from`` reads safely."""
    arrays = {key: value.detach().cpu().numpy() for key, value in state.items()}
    atomic_write_bytes(path, pickle.dumps({"model": arrays, "__author__": "resnet-det"}, protocol=4))


# ---- configs --------------------------------------------------------------------------------

_POOLERS = {"ROIAlignV2": ("roi_align", True), "ROIAlign": ("roi_align", False), "ROIPool": ("roi_pool", False)}
_NORMS = {"FrozenBN": "frozen_bn", "BN": "frozen_bn", "SyncBN": "frozen_bn"}


def detectron2_head(d2cfg, source: str) -> str:
    """``c4`` or ``fpn``: which of our heads a detectron2 Faster R-CNN config is."""
    model = d2cfg.MODEL
    if model.META_ARCHITECTURE != "GeneralizedRCNN" or model.PROPOSAL_GENERATOR.NAME != "RPN":
        raise ConfigError(
            f"{source}: MODEL.META_ARCHITECTURE={model.META_ARCHITECTURE}, PROPOSAL_GENERATOR.NAME="
            f"{model.PROPOSAL_GENERATOR.NAME}: only Faster R-CNN (GeneralizedRCNN with an RPN) converts"
        )
    if model.BACKBONE.NAME == "build_resnet_backbone" and model.ROI_HEADS.NAME == "Res5ROIHeads":
        return "c4"
    if model.BACKBONE.NAME == "build_resnet_fpn_backbone" and model.ROI_HEADS.NAME == "StandardROIHeads":
        return "fpn"
    raise ConfigError(
        f"{source}: MODEL.BACKBONE.NAME={model.BACKBONE.NAME} with ROI_HEADS.NAME={model.ROI_HEADS.NAME}: "
        "converts build_resnet_backbone + Res5ROIHeads (C4) or build_resnet_fpn_backbone + StandardROIHeads (FPN)"
    )


def _require(source: str, checks: Sequence[Tuple[str, object, object]]) -> None:
    for key, value, wanted in checks:
        if value != wanted:
            raise ConfigError(f"{source}: {key}={value} has no counterpart in our detector (it needs {wanted})")


def config_from_detectron2(d2cfg, source: str) -> Tuple[str, List[str]]:
    """Our head and the ``key=value`` overrides of ours that build the detector ``d2cfg`` describes."""
    head = detectron2_head(d2cfg, source)
    m = d2cfg.MODEL
    res, anchors, rpn, roi, box = m.RESNETS, m.ANCHOR_GENERATOR, m.RPN, m.ROI_HEADS, m.ROI_BOX_HEAD
    checks = [
        ("MODEL.MASK_ON", m.MASK_ON, False),
        ("MODEL.KEYPOINT_ON", m.KEYPOINT_ON, False),
        ("MODEL.RESNETS.NUM_GROUPS", res.NUM_GROUPS, 1),
        ("MODEL.RESNETS.WIDTH_PER_GROUP", res.WIDTH_PER_GROUP, 64),
        ("MODEL.RESNETS.RES5_DILATION", res.RES5_DILATION, 1),
        ("MODEL.RESNETS.DEFORM_ON_PER_STAGE", any(res.DEFORM_ON_PER_STAGE), False),
        ("MODEL.RESNETS.STEM_OUT_CHANNELS", res.STEM_OUT_CHANNELS, 64),
        ("MODEL.RESNETS.RES2_OUT_CHANNELS", res.RES2_OUT_CHANNELS, 64 if res.DEPTH in (18, 34) else 256),
        ("MODEL.ANCHOR_GENERATOR.NAME", anchors.NAME, "DefaultAnchorGenerator"),
        ("MODEL.ANCHOR_GENERATOR.OFFSET", anchors.OFFSET, 0.0),
        ("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS (one list)", len(anchors.ASPECT_RATIOS), 1),
        ("MODEL.RPN.HEAD_NAME", rpn.HEAD_NAME, "StandardRPNHead"),
        ("MODEL.RPN.CONV_DIMS", list(rpn.CONV_DIMS), [-1]),
        ("MODEL.PROPOSAL_GENERATOR.MIN_SIZE", m.PROPOSAL_GENERATOR.MIN_SIZE, 0),
        ("MODEL.ROI_HEADS.IOU_THRESHOLDS (one threshold)", len(roi.IOU_THRESHOLDS), 1),
    ]
    if res.NORM not in _NORMS:
        checks.append(("MODEL.RESNETS.NORM", res.NORM, " or ".join(_NORMS)))
    if box.POOLER_TYPE not in _POOLERS:
        checks.append(("MODEL.ROI_BOX_HEAD.POOLER_TYPE", box.POOLER_TYPE, " or ".join(_POOLERS)))
    if head == "fpn":
        checks += [
            ("MODEL.FPN.NORM", m.FPN.NORM, ""),
            ("MODEL.FPN.FUSE_TYPE", m.FPN.FUSE_TYPE, "sum"),
            ("MODEL.FPN.IN_FEATURES", list(m.FPN.IN_FEATURES), ["res2", "res3", "res4", "res5"]),
            ("MODEL.RPN.IN_FEATURES", list(rpn.IN_FEATURES), ["p2", "p3", "p4", "p5", "p6"]),
            ("MODEL.ROI_HEADS.IN_FEATURES", list(roi.IN_FEATURES), ["p2", "p3", "p4", "p5"]),
            ("MODEL.ROI_BOX_HEAD.NAME", box.NAME, "FastRCNNConvFCHead"),
            ("MODEL.ROI_BOX_HEAD.NUM_CONV", box.NUM_CONV, 0),
            ("MODEL.ROI_BOX_HEAD.NUM_FC", box.NUM_FC, 2),
        ]
    else:
        checks += [
            ("MODEL.RPN.IN_FEATURES", list(rpn.IN_FEATURES), ["res4"]),
            ("MODEL.ROI_HEADS.IN_FEATURES", list(roi.IN_FEATURES), ["res4"]),
        ]
    _require(source, checks)
    pooler, aligned = _POOLERS[box.POOLER_TYPE]
    rpn_bg, rpn_fg = (list(rpn.IOU_THRESHOLDS) + [None, None])[:2]
    sizes = [list(level) for level in anchors.SIZES]
    overrides = {
        "model.head": head,
        "model.backbone.name": f"r{res.DEPTH}",
        "model.backbone.weights": None,
        "model.backbone.norm": _NORMS[res.NORM],
        "model.backbone.freeze_at": m.BACKBONE.FREEZE_AT,
        "model.backbone.shortcut": "B",
        "model.backbone.stride_in_1x1": bool(res.STRIDE_IN_1X1),
        "model.input_format.channel_order": d2cfg.INPUT.FORMAT,
        "model.input_format.pixel_mean": list(m.PIXEL_MEAN),
        "model.input_format.pixel_std": list(m.PIXEL_STD),
        "model.anchors.sizes": sizes,
        "model.anchors.aspect_ratios": list(anchors.ASPECT_RATIOS[0]),
        "model.anchors.round": False,
        "model.anchors.nominal_strides": True,
        "model.rpn.pre_nms_topk_train": rpn.PRE_NMS_TOPK_TRAIN,
        "model.rpn.pre_nms_topk_test": rpn.PRE_NMS_TOPK_TEST,
        "model.rpn.post_nms_topk_train": rpn.POST_NMS_TOPK_TRAIN,
        "model.rpn.post_nms_topk_test": rpn.POST_NMS_TOPK_TEST,
        "model.rpn.nms_thresh": rpn.NMS_THRESH,
        "model.rpn.bg_iou_thresh": rpn_bg,
        "model.rpn.fg_iou_thresh": rpn_fg,
        "model.rpn.batch_size_per_image": rpn.BATCH_SIZE_PER_IMAGE,
        "model.rpn.positive_fraction": rpn.POSITIVE_FRACTION,
        "model.rpn.box_reg_weights": list(rpn.BBOX_REG_WEIGHTS),
        "model.roi_heads.pooler": pooler,
        "model.roi_heads.pooler_aligned": aligned,
        "model.roi_heads.pooler_resolution": box.POOLER_RESOLUTION,
        "model.roi_heads.sampling_ratio": box.POOLER_SAMPLING_RATIO,
        "model.roi_heads.batch_size_per_image": roi.BATCH_SIZE_PER_IMAGE,
        "model.roi_heads.positive_fraction": roi.POSITIVE_FRACTION,
        "model.roi_heads.fg_iou_thresh": roi.IOU_THRESHOLDS[0],
        "model.roi_heads.bg_iou_thresh": roi.IOU_THRESHOLDS[0],
        "model.roi_heads.score_thresh": roi.SCORE_THRESH_TEST,
        "model.roi_heads.nms_thresh": roi.NMS_THRESH_TEST,
        "model.roi_heads.detections_per_image": d2cfg.TEST.DETECTIONS_PER_IMAGE,
        "model.roi_heads.min_box_size": 0.0,
        "model.roi_heads.box_reg_weights": list(box.BBOX_REG_WEIGHTS),
        "model.num_classes": roi.NUM_CLASSES,
        "input.min_size_train": list(d2cfg.INPUT.MIN_SIZE_TRAIN),
        "input.max_size_train": d2cfg.INPUT.MAX_SIZE_TRAIN,
        "input.min_size_test": d2cfg.INPUT.MIN_SIZE_TEST,
        "input.max_size_test": d2cfg.INPUT.MAX_SIZE_TEST,
    }
    if head == "fpn":
        overrides["model.fpn_channels"] = m.FPN.OUT_CHANNELS
        overrides["model.roi_heads.fc_dim"] = box.FC_DIM
    return head, [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
