"""The detection-head registry (``HEADS``): what ``model.head`` names, and what a head provides.

A head decides which backbone features are built, what the RPN runs on, where RoIs are pooled
from and what turns a pooled RoI into the vector that the box predictor reads. Built in: ``c4``
(the paper's res5-on-RoIs, ``c4_head``) and ``fpn`` (the pyramid with a 2-fc head, ``fpn``). A
user's head is one function registered under a new name, then chosen with ``model.head=<name>``:

    @HEADS.register("my_head")
    def build_my_head(model_cfg, make_backbone) -> DetectionHead: ...
"""

from dataclasses import dataclass
from typing import Callable, Sequence, Tuple

from omegaconf import DictConfig
from torch import nn

from backbones import InputFormat, Registry
from resnet_det.config.validate import register_choices
from resnet_det.errors import ConfigError


@dataclass
class DetectionHead:
    """What a head gives the Faster R-CNN assembly (``build_detector``)."""

    features: nn.Module  # images -> named feature maps, with output_shape() -> {name: ShapeSpec}
    rpn_features: Tuple[str, ...]  # the maps the RPN runs on (one anchor-size tuple each)
    pooled_features: Tuple[str, ...]  # the maps RoIs are pooled from, one level per RoI by its size
    box_head: nn.Module  # pooled RoIs -> R x box_dim vectors
    box_dim: int
    input_format: InputFormat  # how the backbone's weights expect images normalised


# make_backbone(out_features) builds the configured backbone (model.backbone) with those features.
HeadBuilder = Callable[[DictConfig, Callable[[Sequence[str]], nn.Module]], DetectionHead]

HEADS: Registry[HeadBuilder] = Registry(
    "detection head", ConfigError, hint="register yours with resnet_det.modeling.HEADS.register(name)"
)
register_choices("model.head", HEADS)
