"""Faster R-CNN on our ResNet backbones, assembled from torchvision's parts and the config.

torchvision's ``FasterRCNN`` supplies the RPN, the RoI heads (sampling, losses, post-processing) and
the two-stage forward; this module chooses what goes in it: the backbone (``backbones``, with its
weights, frozen BN and ``freeze_at``), the head (``c4``: the paper's res5-on-RoIs, ``c4_head``;
``fpn``: the pyramid with a 2-fc head, ``fpn``), anchors, the RoI pooler, the thresholds and counts
of ``cfg.model``, and a transform that normalises as the weights expect but never resizes.
"""

import math
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import torch
from omegaconf import DictConfig
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign, roi_pool
from torchvision.ops.poolers import LevelMapper

from backbones import build_backbone
from resnet_det.errors import ConfigError
from resnet_det.modeling.c4_head import build_res5_head
from resnet_det.modeling.fpn import IN_FEATURES as FPN_IN_FEATURES
from resnet_det.modeling.fpn import FPNBackbone, build_fpn_box_head
from resnet_det.modeling.transform import DetectionTransform, resolve_input_format

HEADS = ("c4", "fpn")
POOLERS = ("roi_align", "roi_pool")


class MultiScaleRoIPool(MultiScaleRoIAlign):
    """Fast R-CNN's RoI max pooling (the paper's) with ``MultiScaleRoIAlign``'s level assignment.

    A subclass so that ``FasterRCNN`` accepts it; ``sampling_ratio`` is not used. The scales and
    level mapper must be set, as ``build_box_pooler`` does.
    """

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)])
        features = [x[name] for name in self.featmap_names]
        if len(features) == 1:
            return self._pool(features[0], rois, self.scales[0])
        levels = self.map_levels(boxes)
        out = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            idx = torch.where(levels == level)[0]
            out[idx] = self._pool(feature, rois[idx], scale)
        return out

    def _pool(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        """``roi_pool`` in fp32, returned in the features' dtype, as torchvision's autocast does for
        ``roi_align``: under autocast (``train.amp``) features come in bf16/fp16 and the proposals
        in another dtype, and ``roi_pool`` has neither a mixed-dtype nor a CPU bf16 kernel."""
        pooled = roi_pool(feature.float(), rois.float(), self.output_size, scale)
        return pooled.to(feature.dtype)


def build_box_pooler(kind: str, strides: Dict[str, int], resolution: int, sampling_ratio: int) -> MultiScaleRoIAlign:
    """RoIAlign or RoI pooling over the named feature maps, each RoI on one level (FPN eq. 1).

    The strides are known, so the scales are set here rather than inferred by torchvision from the
    first batch's image sizes (a rounding that goes wrong on images a few strides wide).
    """
    names = list(strides)
    cls = MultiScaleRoIAlign if kind == "roi_align" else MultiScaleRoIPool
    pooler = cls(names, resolution, sampling_ratio)
    pooler.scales = [1.0 / strides[n] for n in names]
    pooler.map_levels = LevelMapper(int(math.log2(strides[names[0]])), int(math.log2(strides[names[-1]])))
    return pooler


def anchor_sizes(sizes: Sequence[Sequence[int]], num_maps: int) -> Tuple[Tuple[int, ...], ...]:
    """One tuple of anchor sizes per feature map, so that one ``model.anchors.sizes`` fits both heads.

    One map (C4): all the sizes given, on that map. Several maps (FPN's p2..p6): a list per map as
    given, or a single list with one size per map (``[[32, 64, 128, 256, 512]]`` -> 32 on p2, ...,
    512 on p6), the C4 recipe's setting read the FPN way.
    """
    levels = [tuple(int(s) for s in level) for level in sizes]
    if not levels or not all(levels) or min(s for level in levels for s in level) <= 0:
        raise ConfigError(f"model.anchors.sizes={levels}: give positive sizes, e.g. [[32, 64, 128, 256, 512]]")
    if num_maps == 1:
        return (tuple(s for level in levels for s in level),)
    if len(levels) == num_maps:
        return tuple(levels)
    if len(levels) == 1 and len(levels[0]) == num_maps:
        return tuple((s,) for s in levels[0])
    raise ConfigError(
        f"model.anchors.sizes={[list(level) for level in levels]} does not fit the {num_maps} levels of the "
        f"fpn head: give one size per level, e.g. [[32, 64, 128, 256, 512]] or [[32], [64], [128], [256], [512]]"
    )


def _check_model_config(m: DictConfig, num_classes: int) -> None:
    if m.head not in HEADS:
        raise ConfigError(f"model.head={m.head!r} is not a detection head: use one of {', '.join(HEADS)}")
    if m.roi_heads.pooler not in POOLERS:
        raise ConfigError(f"model.roi_heads.pooler={m.roi_heads.pooler!r} is unknown: use one of {', '.join(POOLERS)}")
    if not list(m.anchors.aspect_ratios) or min(m.anchors.aspect_ratios) <= 0:
        ratios = list(m.anchors.aspect_ratios)
        raise ConfigError(f"model.anchors.aspect_ratios={ratios}: give positive ratios, e.g. [0.5, 1.0, 2.0]")
    if num_classes < 1:
        raise ConfigError(f"num_classes={num_classes}: a detector needs at least one object class (model.num_classes)")


def build_detector(cfg: DictConfig, num_classes: int) -> FasterRCNN:
    """Faster R-CNN as ``cfg.model`` says, for ``num_classes`` object classes (background excluded).

    The box predictor has ``num_classes + 1`` outputs (label 0 is background, torchvision's
    convention). The input normalisation in use is ``model.backbone_input_format``. RPN counts are
    per image and, for FPN, per level before NMS (torchvision's convention); ``model.train()`` and
    ``model.eval()`` switch between the ``*_train`` and ``*_test`` counts.
    """
    m = cfg.model
    _check_model_config(m, num_classes)
    b = m.backbone
    backbone = build_backbone(
        b.name,
        out_features=("c4", "c5") if m.head == "c4" else FPN_IN_FEATURES,
        weights=b.weights,
        norm=b.norm,
        freeze_at=b.freeze_at,
        shortcut=b.shortcut,
        stride_in_1x1=b.stride_in_1x1,
    )
    input_format = resolve_input_format(backbone.input_format, m.input)
    r = m.roi_heads

    if m.head == "c4":
        box_head = build_res5_head(backbone)
        features, rpn_channels, box_dim = backbone, backbone.out_channels["c4"], box_head.out_channels
        rpn_maps = pooled_maps = OrderedDict(c4=backbone.strides["c4"])
    else:
        features = FPNBackbone(backbone, m.fpn_channels)
        rpn_channels, box_dim = m.fpn_channels, r.fc_dim
        rpn_maps = features.strides
        pooled_maps = OrderedDict((name, s) for name, s in rpn_maps.items() if name != "p6")
        box_head = build_fpn_box_head(m.fpn_channels, r.pooler_resolution, r.fc_dim)

    sizes = anchor_sizes(m.anchors.sizes, len(rpn_maps))
    ratios = (tuple(float(a) for a in m.anchors.aspect_ratios),) * len(sizes)
    anchors = AnchorGenerator(sizes, ratios)
    rpn_head = RPNHead(rpn_channels, anchors.num_anchors_per_location()[0])

    model = FasterRCNN(
        features,
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=m.rpn.pre_nms_topk_train,
        rpn_pre_nms_top_n_test=m.rpn.pre_nms_topk_test,
        rpn_post_nms_top_n_train=m.rpn.post_nms_topk_train,
        rpn_post_nms_top_n_test=m.rpn.post_nms_topk_test,
        rpn_nms_thresh=m.rpn.nms_thresh,
        rpn_fg_iou_thresh=m.rpn.fg_iou_thresh,
        rpn_bg_iou_thresh=m.rpn.bg_iou_thresh,
        rpn_batch_size_per_image=m.rpn.batch_size_per_image,
        rpn_positive_fraction=m.rpn.positive_fraction,
        box_roi_pool=build_box_pooler(r.pooler, pooled_maps, r.pooler_resolution, r.sampling_ratio),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(box_dim, num_classes + 1),
        box_score_thresh=r.score_thresh,
        box_nms_thresh=r.nms_thresh,
        box_detections_per_img=r.detections_per_image,
        box_fg_iou_thresh=r.fg_iou_thresh,
        box_bg_iou_thresh=r.bg_iou_thresh,
        box_batch_size_per_image=r.batch_size_per_image,
        box_positive_fraction=r.positive_fraction,
    )
    if cfg.input.size_divisibility < 32 or cfg.input.size_divisibility % 32:
        raise ConfigError(f"input.size_divisibility={cfg.input.size_divisibility} must be a multiple of 32 (the coarsest stride)")
    model.transform = DetectionTransform(input_format, size_divisible=cfg.input.size_divisibility)
    model.backbone_input_format = input_format
    return model
