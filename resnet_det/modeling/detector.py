"""Faster R-CNN on our ResNet backbones, assembled from torchvision's parts and the config.

torchvision's ``FasterRCNN`` supplies the RPN, the RoI heads (sampling, losses, post-processing) and
the two-stage forward; this module chooses what goes in it: the backbone (``backbones``, with its
weights, frozen BN and ``freeze_at``), the head named by ``model.head`` in the ``HEADS`` registry
(``c4``: the paper's res5-on-RoIs, ``c4_head``; ``fpn``: the pyramid with a 2-fc head, ``fpn``; or a
user's), anchors, the RoI pooler, the thresholds and counts of ``cfg.model``, and a transform that
normalises as the weights expect but never resizes. The config was validated by ``load_config``
(``resnet_det.config.validate``).
"""

import math
from collections import OrderedDict
from functools import partial
from typing import Dict, List, Sequence, Tuple

import torch
from omegaconf import DictConfig
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign, roi_align, roi_pool
from torchvision.ops.poolers import LevelMapper

from backbones import build_backbone
from resnet_det.errors import ConfigError
from resnet_det.modeling import backbone_weights, c4_head, fpn  # noqa: F401  (register the kinds and heads)
from resnet_det.modeling.anchors import AnchorGenerator
from resnet_det.modeling.heads import HEADS
from resnet_det.modeling.roi_heads import RoIHeads
from resnet_det.modeling.torchvision_weights import check_model_config
from resnet_det.modeling.transform import DetectionTransform, resolve_input_format


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


class MultiScaleRoIAlignV2(MultiScaleRoIAlign):
    """RoIAlign with ``aligned=True`` (detectron2's ``ROIAlignV2``): a box's corners are shifted by
    half a cell, so that a pixel's centre, not its corner, maps to its feature-map cell. torchvision's
    ``MultiScaleRoIAlign`` has no such switch; the level assignment is ``MultiScaleRoIPool``'s."""

    forward = MultiScaleRoIPool.forward

    def _pool(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        pooled = roi_align(feature.float(), rois.float(), self.output_size, scale, self.sampling_ratio, aligned=True)
        return pooled.to(feature.dtype)


def build_box_pooler(
    kind: str, strides: Dict[str, int], resolution: int, sampling_ratio: int, aligned: bool = False
) -> MultiScaleRoIAlign:
    """RoIAlign (``aligned``: detectron2's RoIAlignV2) or RoI pooling over the named feature maps,
    each RoI on one level (FPN eq. 1).

    The strides are known, so the scales are set here rather than inferred by torchvision from the
    first batch's image sizes (a rounding that goes wrong on images a few strides wide).
    """
    names = list(strides)
    if kind == "roi_align":
        cls = MultiScaleRoIAlignV2 if aligned else MultiScaleRoIAlign
    else:
        cls = MultiScaleRoIPool
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


def build_detector(cfg: DictConfig, num_classes: int) -> FasterRCNN:
    """Faster R-CNN as ``cfg.model`` says, for ``num_classes`` object classes (background excluded).

    The box predictor has ``num_classes + 1`` outputs (label 0 is background, torchvision's
    convention). The input normalisation in use is ``model.backbone_input_format``. RPN counts are
    per image and, for FPN, per level before NMS (torchvision's convention); ``model.train()`` and
    ``model.eval()`` switch between the ``*_train`` and ``*_test`` counts.
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes={num_classes}: a detector needs at least one object class (model.num_classes)")
    model_cfg = cfg.model
    if model_cfg.weights:
        check_model_config(model_cfg, model_cfg.weights)
    backbone_cfg = model_cfg.backbone
    make_backbone = partial(
        build_backbone,
        backbone_cfg.name,
        weights=backbone_cfg.weights,
        norm=backbone_cfg.norm,
        freeze_at=backbone_cfg.freeze_at,
        shortcut=backbone_cfg.shortcut,
        stride_in_1x1=backbone_cfg.stride_in_1x1,
    )
    head = HEADS.get(model_cfg.head)(model_cfg, make_backbone)
    input_format = resolve_input_format(head.input_format, model_cfg.input_format)
    shapes = head.features.output_shape()
    rpn_channels = {shapes[name].channels for name in head.rpn_features}
    if len(rpn_channels) != 1:
        raise ConfigError(
            f"model.head={model_cfg.head}: the RPN is shared by {', '.join(head.rpn_features)}, which must have "
            f"the same number of channels, not {sorted(rpn_channels)}"
        )
    # torchvision's FasterRCNN requires its backbone to have ``out_channels`` (an int); ours
    # report their features through ``output_shape()``, and this is the only place it is set.
    head.features.out_channels = rpn_channels.pop()
    roi_cfg = model_cfg.roi_heads

    sizes = anchor_sizes(model_cfg.anchors.sizes, len(head.rpn_features))
    ratios = (tuple(float(a) for a in model_cfg.anchors.aspect_ratios),) * len(sizes)
    anchor_strides = [shapes[name].stride for name in head.rpn_features] if model_cfg.anchors.nominal_strides else None
    anchors = AnchorGenerator(sizes, ratios, round_anchors=model_cfg.anchors.round, strides=anchor_strides)
    rpn_head = RPNHead(head.features.out_channels, anchors.num_anchors_per_location()[0])
    pooled_strides = OrderedDict((name, shapes[name].stride) for name in head.pooled_features)

    rpn_cfg = model_cfg.rpn
    model = FasterRCNN(
        head.features,
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=rpn_cfg.pre_nms_topk_train,
        rpn_pre_nms_top_n_test=rpn_cfg.pre_nms_topk_test,
        rpn_post_nms_top_n_train=rpn_cfg.post_nms_topk_train,
        rpn_post_nms_top_n_test=rpn_cfg.post_nms_topk_test,
        rpn_nms_thresh=rpn_cfg.nms_thresh,
        rpn_fg_iou_thresh=rpn_cfg.fg_iou_thresh,
        rpn_bg_iou_thresh=rpn_cfg.bg_iou_thresh,
        rpn_batch_size_per_image=rpn_cfg.batch_size_per_image,
        rpn_positive_fraction=rpn_cfg.positive_fraction,
        box_roi_pool=build_box_pooler(
            roi_cfg.pooler, pooled_strides, roi_cfg.pooler_resolution, roi_cfg.sampling_ratio, roi_cfg.pooler_aligned
        ),
        box_head=head.box_head,
        box_predictor=FastRCNNPredictor(head.box_dim, num_classes + 1),
        box_score_thresh=roi_cfg.score_thresh,
        box_nms_thresh=roi_cfg.nms_thresh,
        box_detections_per_img=roi_cfg.detections_per_image,
        box_fg_iou_thresh=roi_cfg.fg_iou_thresh,
        box_bg_iou_thresh=roi_cfg.bg_iou_thresh,
        box_batch_size_per_image=roi_cfg.batch_size_per_image,
        box_positive_fraction=roi_cfg.positive_fraction,
    )
    model.rpn.box_coder = BoxCoder(tuple(float(w) for w in rpn_cfg.box_reg_weights))
    tv_heads = model.roi_heads
    model.roi_heads = RoIHeads(
        tv_heads.box_roi_pool,
        tv_heads.box_head,
        tv_heads.box_predictor,
        roi_cfg.fg_iou_thresh,
        roi_cfg.bg_iou_thresh,
        roi_cfg.batch_size_per_image,
        roi_cfg.positive_fraction,
        tuple(float(w) for w in roi_cfg.box_reg_weights),
        roi_cfg.score_thresh,
        roi_cfg.nms_thresh,
        roi_cfg.detections_per_image,
        min_box_size=roi_cfg.min_box_size,
    )
    model.transform = DetectionTransform(input_format, size_divisible=cfg.input.size_divisibility)
    model.backbone_input_format = input_format
    return model
