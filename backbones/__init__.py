"""The residual networks of He et al. (2015) as classifiers and as detection backbones.

    from backbones import build_model, build_backbone
    model = build_model("r50", weights="imagenet")           # forward(images) -> logits
    body = build_backbone("r101", weights="R-101.pkl")        # forward(images) -> {"c2": .., "c5": ..}

Names (``list_models()``): r18..r152 and plain18..plain152 (Table 1), cifar_r{6n+2} and
cifar_plain{6n+2} (section 4.2). This package has no detection code and can be used on its own.
"""

from . import cifar, resnet  # noqa: F401  (registers the built-in models)
from .backbone import ResNetBackbone, build_backbone
from .errors import BackboneError
from .models import build_model, list_models, register_model
from .norm import FrozenBatchNorm2d
from .registry import Registry
from .shape_spec import ShapeSpec
from .weights import InputFormat, LoadReport, load_weights

__all__ = [
    "BackboneError",
    "FrozenBatchNorm2d",
    "InputFormat",
    "LoadReport",
    "Registry",
    "ResNetBackbone",
    "ShapeSpec",
    "build_backbone",
    "build_model",
    "list_models",
    "load_weights",
    "register_model",
]
