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

IN_FEATURES = ("c2", "c3", "c4", "c5")


class FPNBackbone(nn.Module):
    """A bottom-up backbone returning c2..c5, topped by the pyramid: returns p2..p6.

    ``out_channels`` is one int (the same on every level), as torchvision's detectors expect;
    ``strides`` maps each output to its stride.
    """

    def __init__(self, bottom_up: nn.Module, out_channels: int = 256):
        super().__init__()
        self.bottom_up = bottom_up
        self.fpn = FeaturePyramidNetwork(
            [bottom_up.out_channels[name] for name in IN_FEATURES], out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels
        levels = [bottom_up.strides[name] for name in IN_FEATURES]
        levels.append(2 * levels[-1])
        self.strides: Dict[str, int] = OrderedDict((f"p{k}", s) for k, s in enumerate(levels, start=2))

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        features = self.bottom_up(x)
        pyramid = self.fpn(OrderedDict((name, features[name]) for name in IN_FEATURES))
        return OrderedDict(zip(self.strides, pyramid.values()))


def build_fpn_box_head(in_channels: int, resolution: int, fc_dim: int) -> TwoMLPHead:
    """Two fully connected layers of ``fc_dim`` on the flattened ``resolution`` x ``resolution`` RoI."""
    return TwoMLPHead(in_channels * resolution**2, fc_dim)
