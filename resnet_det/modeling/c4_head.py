"""The paper's C4 head (section 4.3, appendix A): conv5_x applied to each region.

The RPN and RoI pooling share conv1 to conv4_x (stride 16). Each pooled RoI (14 x 14 by default)
goes through res5, whose first block strides by 2 (to 7 x 7), and global average pooling turns it
into the vector that the classifier and box regressor read. res5 is the backbone's own ``layer4``,
taken out with ``split_res5``, so it keeps the loaded ImageNet weights, the frozen BN and the
``freeze_at`` setting. This is detectron2's ``Res5ROIHeads`` as a torchvision ``box_head``.
"""

from torch import Tensor, nn

from resnet_det.modeling.heads import HEADS, DetectionHead


class Res5BoxHead(nn.Module):
    """res5 on pooled RoIs, then global average pooling: ``R x C4 x S x S -> R x out_channels``."""

    def __init__(self, res5: nn.Module, out_channels: int):
        super().__init__()
        self.res5 = res5
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.res5(x).mean(dim=(2, 3))


def build_res5_head(backbone: nn.Module) -> Res5BoxHead:
    """Take res5 out of ``backbone`` (built with c4 and c5; it then outputs c4 only) as the box head."""
    out_channels = backbone.output_shape()["c5"].channels
    return Res5BoxHead(backbone.split_res5(), out_channels)


@HEADS.register("c4")
def build_c4_head(model_cfg, make_backbone) -> DetectionHead:
    """RPN and RoI pooling on c4; res5 as the box head."""
    backbone = make_backbone(("c4", "c5"))
    box_head = build_res5_head(backbone)
    return DetectionHead(backbone, ("c4",), ("c4",), box_head, box_head.out_channels, backbone.input_format)
