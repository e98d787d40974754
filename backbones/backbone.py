"""Feature extractors for detection: a classifier's stem and stages with named outputs.

Features: ``stem`` (after conv1 and the max pool), then ``c2``..``c5``, the outputs of ``layer1``..
``layer4`` (the paper's conv2_x..conv5_x, detectron2's res2..res5). For the ImageNet nets their
strides are 4, 4, 8, 16, 32. The CIFAR nets have no max pool and three stages: ``stem`` and
``c2``, ``c3``, ``c4`` at strides 1, 1, 2, 4 (and no ``c5``). ``output_shape()`` says so for the
features a backbone returns: ``{name: ShapeSpec(channels, stride)}``.

The paper's C4 detector shares conv1..conv4_x and runs conv5_x on each pooled region: build with
``out_features=("c4", "c5")`` and call ``split_res5()``, which hands ``layer4`` over to the head.
"""

from collections import OrderedDict
from typing import Dict, Iterator, Sequence

import torch
from torch import nn

from .complexity import meta_forward
from .errors import BackboneError
from .models import instantiate, lookup
from .norm import FrozenBatchNorm2d
from .shape_spec import ShapeSpec
from .weights import load_weights, read_weights

STAGES = {"c2": "layer1", "c3": "layer2", "c4": "layer3", "c5": "layer4"}
_PROBE_SIZE = 256  # a side divisible by every stride, for measuring the features' geometry


class ResNetBackbone(nn.Module):
    """The feature extractor of a classifier laid out as torchvision's ResNet (the Backbone
    contract of docs/architecture.md).

    Takes over ``conv1``, ``bn1``, ``relu``, ``maxpool`` (if any) and the stages up to the last
    requested feature, under their names, so that classifier state dicts load into it; the other
    modules are listed in ``dropped_modules`` (their weights are expected in such files, not used).
    """

    def __init__(self, classifier: nn.Module, out_features: Sequence[str]):
        super().__init__()
        arch = getattr(classifier, "arch", type(classifier).__name__)
        required = ("conv1", "bn1", "relu", "layer1")
        if not all(isinstance(getattr(classifier, name, None), nn.Module) for name in required):
            raise BackboneError(
                f"model '{arch}' is not laid out as a ResNet ({', '.join(required)}, ...): register it "
                "with register_model(name, backbone=fn) to say how to extract its features"
            )
        self.conv1, self.bn1, self.relu = classifier.conv1, classifier.bn1, classifier.relu
        maxpool = getattr(classifier, "maxpool", None)
        self.maxpool = maxpool if isinstance(maxpool, nn.Module) else nn.Identity()
        for stage in STAGES.values():
            if isinstance(getattr(classifier, stage, None), nn.Module):
                self.add_module(stage, getattr(classifier, stage))
        self.arch = arch
        self.num_stages = sum(stage in self._modules for stage in STAGES.values())

        available = ("stem",) + tuple(feature for feature, stage in STAGES.items() if stage in self._modules)
        unknown = [feature for feature in out_features if feature not in available]
        if unknown or not out_features:
            raise BackboneError(f"{arch}: out_features {tuple(out_features)} must be some of {', '.join(available)}")
        self.out_features = available  # measure all: channels and stride of each feature
        self._shapes = {
            feature: ShapeSpec(channels=output.shape[1], stride=_PROBE_SIZE // output.shape[-1])
            for feature, output in meta_forward(self, (1, 3, _PROBE_SIZE, _PROBE_SIZE)).items()
        }
        self._select(tuple(feature for feature in available if feature in out_features))
        self.dropped_modules = tuple(name for name in classifier._modules if name not in self._modules)

    def _select(self, out_features: tuple[str, ...]) -> None:
        """Output ``out_features`` and drop the stages after the last of them."""
        self.out_features = out_features
        last = max(list(STAGES).index(feature) if feature in STAGES else -1 for feature in out_features)
        for stage in list(STAGES.values())[last + 1 :]:
            if stage in self._modules:
                delattr(self, stage)

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """Channels and stride of each feature in ``out_features`` (the Backbone contract)."""
        return {feature: self._shapes[feature] for feature in self.out_features}

    def _stages(self) -> Iterator[tuple[str, nn.Module]]:
        for feature, stage in STAGES.items():
            if stage in self._modules:
                yield feature, self._modules[stage]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        outputs = OrderedDict()
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        if "stem" in self.out_features:
            outputs["stem"] = x
        for feature, stage in self._stages():
            x = stage(x)
            if feature in self.out_features:
                outputs[feature] = x
        return outputs

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem (``freeze_at`` >= 1) and the stages res2..res<freeze_at>: no gradients,
        and BatchNorm becomes FrozenBatchNorm2d, so that ``train()`` does not move its statistics."""
        if not 0 <= freeze_at <= 1 + self.num_stages:
            raise BackboneError(
                f"{self.arch}: freeze_at={freeze_at} must be 0 (train all) .. {1 + self.num_stages} "
                f"(stem and res2..res{1 + self.num_stages})"
            )
        names = ["conv1", "bn1"] if freeze_at >= 1 else []
        names += [STAGES[f"c{level}"] for level in range(2, freeze_at + 1)]
        for name in names:
            if name in self._modules:
                module = FrozenBatchNorm2d.convert(self._modules[name])
                setattr(self, name, module.requires_grad_(False))

    def split_res5(self) -> nn.Module:
        """Remove ``layer4`` (res5) and return it, for the C4 head; ``c5`` is no longer output."""
        if "layer4" not in self._modules:
            raise BackboneError(
                f"{self.arch}: no res5 (layer4) to split: it has {self.num_stages} stages, and layer4 is "
                "only kept with 'c5' in out_features (e.g. out_features=('c4', 'c5'))"
            )
        remaining = tuple(feature for feature in self.out_features if feature != "c5")
        if not remaining:
            raise BackboneError(f"{self.arch}: split_res5 would leave no features: request 'c4' too")
        res5 = self.layer4
        del self.layer4
        self.dropped_modules += ("layer4",)
        self._select(remaining)
        return res5


def build_backbone(
    name: str,
    out_features: Sequence[str] = ("c2", "c3", "c4", "c5"),
    freeze_at: int = 2,
    norm: str = "frozen_bn",
    weights=None,
    **options,
) -> nn.Module:
    """The feature extractor of model ``name`` (Backbone contract of docs/architecture.md).

    ``freeze_at``: 0 trains all, 1 freezes the stem, k the stem and res2..res<k>. ``weights`` and
    ``options`` as for ``build_model``; ``input_format`` is the weights'. Models registered with a
    ``backbone`` function are extracted by it instead of ``ResNetBackbone``.
    """
    entry, _ = lookup(name)
    source = read_weights(weights, name) if weights is not None else None
    classifier = instantiate(name, source, norm=norm, **options)
    backbone = (entry.backbone or ResNetBackbone)(classifier, tuple(out_features))
    backbone.arch, backbone.input_format = name, classifier.input_format
    if source is not None:
        load_weights(backbone, source)
    backbone.freeze(freeze_at)
    return backbone
