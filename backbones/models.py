"""The model registry (``MODELS``): names such as ``r50`` or ``cifar_r110`` -> builders, and ``build_model``.

A registered name may hold one ``{...}`` placeholder for a number, which names a whole family:
``cifar_r{6n+2}`` matches ``cifar_r20`` .. ``cifar_r1202`` and its builder receives the number as
``depth`` (the text in the braces only documents which numbers are valid; the builder checks).
"""

import re
from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from .errors import BackboneError
from .registry import Registry
from .weights import TORCHVISION_INPUT, Weights, load_weights, read_weights

_PLACEHOLDER = re.compile(r"\{[^{}]*\}")


@dataclass(frozen=True)
class ModelEntry:
    name: str  # as listed, e.g. "r50" or "cifar_r{6n+2}"
    build: Callable[..., nn.Module]  # (**options) -> classifier
    # (classifier, out_features) -> feature extractor; None = backbones.backbone.ResNetBackbone
    backbone: Optional[Callable[..., nn.Module]] = None
    pattern: Optional[re.Pattern] = None  # for a numbered family: matches its names, group 1 = depth


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(name: str, *, backbone: Optional[Callable[..., nn.Module]] = None):
    """Decorator registering a classifier builder under ``name``.

    The builder takes keyword options (``num_classes``, ``norm``, ``shortcut``, ... and any of its
    own; it must accept ``**options``, since options recorded with weights are passed on) and returns
    a classifier, ``forward(images) -> logits``. ``build_backbone`` turns it into a feature extractor
    when it is laid out like torchvision's ResNet (``conv1``, ``bn1``, ``relu``, optional ``maxpool``,
    ``layer1``.. of blocks); for any other layout give ``backbone=fn`` with ``fn(classifier,
    out_features)`` returning a module that keeps the Backbone contract of docs/architecture.md
    (``forward(images) -> {name: features}``, ``out_features``, ``output_shape() -> {name: ShapeSpec}``)
    and has ``freeze(freeze_at)`` (subclassing ``backbones.backbone.ResNetBackbone`` is one way).
    """
    parts = _PLACEHOLDER.split(name)
    if len(parts) > 2:
        raise BackboneError(f"model name '{name}' has several {{...}} placeholders: use one, for the depth")
    pattern = re.compile(re.escape(parts[0]) + r"(\d+)" + re.escape(parts[1])) if len(parts) == 2 else None

    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.register(name, ModelEntry(name, build, backbone, pattern))
        return build

    return decorator


def list_models() -> list[str]:
    """The registered names, sorted; numbered families as their pattern (``cifar_r{6n+2}``)."""
    return MODELS.names()


def lookup(name: str) -> tuple[ModelEntry, dict[str, int]]:
    """The entry that builds ``name`` and the arguments its name carries (``{"depth": n}`` for families)."""
    if name in MODELS and MODELS.get(name).pattern is None:
        return MODELS.get(name), {}
    for _, entry in MODELS.items():
        match = entry.pattern.fullmatch(name) if entry.pattern is not None else None
        if match:
            return entry, {"depth": int(match.group(1))}
    raise MODELS.unknown(name)


def instantiate(name: str, weights: Optional[Weights] = None, **options) -> nn.Module:
    """Build model ``name`` without loading weights.

    Options given as None are left to the weights (what they were made with: ``num_classes``,
    ``stride_in_1x1``, ``shortcut``) and then to the model's defaults. The model carries ``arch``
    (its name) and ``input_format`` (torchvision's ImageNet convention until weights say otherwise).
    """
    entry, numbered = lookup(name)
    chosen = {key: value for key, value in options.items() if value is not None}
    model = entry.build(**numbered, **{**(weights.options if weights is not None else {}), **chosen})
    model.arch = name
    model.input_format = TORCHVISION_INPUT
    return model


def build_model(name: str, num_classes: Optional[int] = None, *, weights=None, **options) -> nn.Module:
    """The classifier ``name`` (see ``list_models()``), ``forward(images) -> logits``.

    ``num_classes`` None = what ``weights`` hold, else the architecture's own (1000 for the ImageNet
    nets, 10 for the CIFAR nets). ``weights``: see ``backbones.weights.load_weights``; a classifier
    head of another size than ``num_classes`` is left at its initialisation (fine-tuning).
    Options (all optional): ``shortcut`` "A" | "B" | "C", ``stride_in_1x1``, ``zero_init_residual``,
    ``norm`` "bn" | "frozen_bn" | "gn" | "syncbn". The built-in models also carry ``options``, the
    resolved values, as checkpoints record them.
    """
    source = read_weights(weights, name) if weights is not None else None
    model = instantiate(name, source, num_classes=num_classes, **options)
    if source is not None:
        load_weights(model, source)
    return model
