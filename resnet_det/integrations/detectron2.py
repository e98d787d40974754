"""Our backbones inside detectron2: importing this module registers them.

- ``BACKBONE_REGISTRY``: ``build_resnet_det_backbone`` (C4: our trunk up to ``res4``, for detectron2's
  RPN and RoI pooling) and ``build_resnet_det_fpn_backbone`` (our trunk's ``res2``..``res5`` under
  detectron2's own ``FPN``, with its max-pooled ``p6``).
- ``ROI_HEADS_REGISTRY``: ``ResNetDetRes5ROIHeads``, detectron2's ``Res5ROIHeads`` with our ``res5``
  (the same model and options as the trunk; detectron2's own builds bottlenecks only).

Every model of ours is available (r18..r152, plain nets, shortcuts A/B/C, the stride in the 1x1 or
the 3x3, our norms, ``MODEL.BACKBONE.FREEZE_AT``), with every weights form of ours
(``backbones.weights``: "imagenet", a torchvision ``.pth``, an MSRA ``.pkl``, a checkpoint of our
classification or detection training), set under ``MODEL.RESNET_DET`` (``add_resnet_det_config``).
The backbones follow detectron2's ``Backbone`` contract (``output_shape()``, ``size_divisibility``).
``configs/detectron2/`` holds recipes that select them.

    from detectron2.config import get_cfg
    from resnet_det.integrations.detectron2 import add_resnet_det_config
    cfg = get_cfg(); add_resnet_det_config(cfg); cfg.merge_from_file("configs/detectron2/faster_rcnn_r50_fpn.yaml")
"""

import logging
from typing import Dict, Sequence

from resnet_det.integrations import require_detectron2

require_detectron2("resnet_det.integrations.detectron2")

from detectron2.config import CfgNode  # noqa: E402  (after the one-line check above)
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY, Backbone  # noqa: E402
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool  # noqa: E402
from detectron2.modeling.roi_heads import Res5ROIHeads  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import resnet_det.modeling  # noqa: E402, F401  (registers the "detection" checkpoint kind)
from backbones import InputFormat, build_backbone  # noqa: E402
from resnet_det.errors import ConfigError  # noqa: E402

logger = logging.getLogger(__name__)

# Our feature names -> detectron2's
D2_NAMES = {"stem": "stem", "c2": "res2", "c3": "res3", "c4": "res4", "c5": "res5"}
OURS = {d2: ours for ours, d2 in D2_NAMES.items()}


def add_resnet_det_config(cfg: CfgNode) -> CfgNode:
    """Add ``MODEL.RESNET_DET`` (our backbone's model and weights) to a detectron2 config; returns it."""
    node = cfg.MODEL.RESNET_DET = CfgNode()
    node.NAME = "r50"  # r18..r152, plain18..plain152, or a model registered with backbones.register_model
    node.WEIGHTS = ""  # "" = random; "imagenet", a .pth, an MSRA .pkl or a checkpoint of ours
    node.NORM = "frozen_bn"  # bn | frozen_bn | gn | syncbn
    node.SHORTCUT = None  # None = the model's default (B); "A" | "B" | "C"
    node.STRIDE_IN_1X1 = None  # None = follow the weights (True for MSRA's and with no weights)
    node.OUT_FEATURES = ["res4"]  # the C4 builder's; the FPN builder takes MODEL.FPN.IN_FEATURES
    return cfg


class ResNetDetBackbone(Backbone):
    """One of our feature extractors (``backbones.build_backbone``) as a detectron2 ``Backbone``:
    the same modules and weights, features under detectron2's names (``res2``..``res5``)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body
        shapes = body.output_shape()
        self._out_features = [D2_NAMES[name] for name in shapes]
        self._out_feature_channels = {D2_NAMES[name]: shape.channels for name, shape in shapes.items()}
        self._out_feature_strides = {D2_NAMES[name]: shape.stride for name, shape in shapes.items()}

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        return {D2_NAMES[name]: value for name, value in self.body(x).items()}


def _build_ours(cfg: CfgNode, d2_features: Sequence[str]) -> nn.Module:
    """Our backbone as ``cfg.MODEL.RESNET_DET`` and ``MODEL.BACKBONE.FREEZE_AT`` say, with ``d2_features``."""
    node = cfg.MODEL.RESNET_DET
    unknown = [name for name in d2_features if name not in OURS]
    if unknown:
        raise ConfigError(f"MODEL.RESNET_DET features {unknown}: choose among {', '.join(OURS)}")
    body = build_backbone(
        node.NAME,
        out_features=[OURS[name] for name in d2_features],
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        norm=node.NORM,
        weights=node.WEIGHTS or None,
        shortcut=node.SHORTCUT,
        stride_in_1x1=node.STRIDE_IN_1X1,
    )
    _check_input_format(cfg, body.input_format)
    return body


def _check_input_format(cfg: CfgNode, fmt: InputFormat) -> None:
    """detectron2 normalises by ``INPUT.FORMAT``, ``MODEL.PIXEL_MEAN/STD``: say so where the weights
    expect another normalisation (their forms record theirs)."""
    if not cfg.MODEL.RESNET_DET.WEIGHTS or cfg.INPUT.FORMAT not in ("RGB", "BGR"):
        return
    given = InputFormat(cfg.INPUT.FORMAT, tuple(cfg.MODEL.PIXEL_MEAN), tuple(cfg.MODEL.PIXEL_STD))
    if given != fmt:
        logger.warning(
            "%s expects %s input with mean %s and std %s; the config gives INPUT.FORMAT=%s, MODEL.PIXEL_MEAN=%s, "
            "MODEL.PIXEL_STD=%s: set those to the weights'",
            cfg.MODEL.RESNET_DET.WEIGHTS,
            fmt.channel_order,
            list(fmt.pixel_mean),
            list(fmt.pixel_std),
            given.channel_order,
            list(given.pixel_mean),
            list(given.pixel_std),
        )


@BACKBONE_REGISTRY.register()
def build_resnet_det_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """The C4 backbone: our trunk with the features of ``MODEL.RESNET_DET.OUT_FEATURES`` (``res4``)."""
    return ResNetDetBackbone(_build_ours(cfg, cfg.MODEL.RESNET_DET.OUT_FEATURES))


@BACKBONE_REGISTRY.register()
def build_resnet_det_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """detectron2's FPN (and its max-pooled ``p6``) on our trunk's ``MODEL.FPN.IN_FEATURES``."""
    bottom_up = ResNetDetBackbone(_build_ours(cfg, cfg.MODEL.FPN.IN_FEATURES))
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@ROI_HEADS_REGISTRY.register()
class ResNetDetRes5ROIHeads(Res5ROIHeads):
    """detectron2's C4 RoI heads with our ``res5`` (``layer4`` of the model the backbone builds)."""

    @classmethod
    def _build_res5_block(cls, cfg: CfgNode):
        body = _build_ours(cfg, ["res4", "res5"])
        out_channels = body.output_shape()["c5"].channels
        return body.split_res5(), out_channels
