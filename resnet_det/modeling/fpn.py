"""The feature pyramid (Lin et al. 2017) on c2..c5, and its 2-fc box head.

torchvision's ``FeaturePyramidNetwork`` adds the top-down path and lateral connections; p6 is p5
subsampled by 2 (``LastLevelMaxPool``) and serves only the RPN's largest anchors, while RoIs are
pooled from p2..p5 by size (FPN eq. 1). This is the modern default of detectron2 and torchvision,
and differs from the paper's C4 design in that every level feeds both the RPN and the RoI head.
"""

from collections import OrderedDict
from typing import Dict

from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from backbones import ShapeSpec
from resnet_det.modeling.heads import HEADS, DetectionHead

IN_FEATURES = ("c2", "c3", "c4", "c5")


class FPNBackbone(nn.Module):
    """A bottom-up backbone returning c2..c5, topped by the pyramid: returns p2..p6, every level
    with ``out_channels`` channels (``output_shape()``, as for the bottom-up backbone)."""

    def __init__(self, bottom_up: nn.Module, out_channels: int = 256):
        super().__init__()
        self.bottom_up = bottom_up
        bottom = bottom_up.output_shape()
        self.fpn = FeaturePyramidNetwork(
            [bottom[name].channels for name in IN_FEATURES], out_channels, extra_blocks=LastLevelMaxPool()
        )
        strides = [bottom[name].stride for name in IN_FEATURES]
        strides.append(2 * strides[-1])
        self._shapes: Dict[str, ShapeSpec] = OrderedDict(
            (f"p{level}", ShapeSpec(out_channels, stride)) for level, stride in enumerate(strides, start=2)
        )

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        features = self.bottom_up(x)
        pyramid = self.fpn(OrderedDict((name, features[name]) for name in IN_FEATURES))
        return OrderedDict(zip(self._shapes, pyramid.values()))


def build_fpn_box_head(in_channels: int, resolution: int, fc_dim: int) -> TwoMLPHead:
    """Two fully connected layers of ``fc_dim`` on the flattened ``resolution`` x ``resolution`` RoI."""
    return TwoMLPHead(in_channels * resolution**2, fc_dim)


@HEADS.register("fpn")
def build_fpn_head(model_cfg, make_backbone) -> DetectionHead:
    """The RPN on p2..p6, RoIs pooled from p2..p5, two fc layers of ``model.roi_heads.fc_dim``."""
    bottom_up = make_backbone(IN_FEATURES)
    features = FPNBackbone(bottom_up, model_cfg.fpn_channels)
    levels = tuple(features.output_shape())
    roi = model_cfg.roi_heads
    box_head = build_fpn_box_head(model_cfg.fpn_channels, roi.pooler_resolution, roi.fc_dim)
    pooled = tuple(level for level in levels if level != "p6")
    return DetectionHead(features, levels, pooled, box_head, roi.fc_dim, bottom_up.input_format)
