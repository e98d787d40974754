"""Normalisation layers of the backbones, chosen by name, and the frozen BatchNorm of fine-tuning.

The paper fine-tunes detectors with BatchNorm "frozen": statistics computed on ImageNet and used as
a fixed per-channel affine layer, because detection batches are too small to estimate them.
"""

import math

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d as _TorchvisionFrozenBatchNorm2d

from .errors import BackboneError

NORMS = ("bn", "frozen_bn", "gn", "syncbn")
GN_GROUPS = 32


class FrozenBatchNorm2d(_TorchvisionFrozenBatchNorm2d):
    """BatchNorm2d with fixed statistics and affine parameters (all buffers, none trained).

    Loads BatchNorm state dicts as they are (``num_batches_tracked`` is ignored) and exposes the
    per-channel affine it computes, so that inference can fold it into the preceding convolution.
    """

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel ``(scale, shift)`` with ``forward(x) == x * scale + shift``."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_and_shift()
        # In the input's dtype, so that the layer does not promote half-precision activations.
        return x * scale.to(x.dtype).reshape(1, -1, 1, 1) + shift.to(x.dtype).reshape(1, -1, 1, 1)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replace every BatchNorm2d / SyncBatchNorm in ``module`` by a FrozenBatchNorm2d with its values.

        The BatchNorm layers must be affine and track running statistics (as every one built here).
        Returns the converted module: a new one when ``module`` itself is a BatchNorm, otherwise
        ``module``, changed in place.
        """
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            frozen = cls(module.num_features, eps=module.eps).to(module.weight.device)
            frozen.load_state_dict(module.state_dict())
            return frozen
        for name, child in module.named_children():
            converted = cls.convert(child)
            if converted is not child:
                setattr(module, name, converted)
        return module


def get_norm(norm: str, channels: int) -> nn.Module:
    """The normalisation layer called ``norm`` (one of ``NORMS``) for ``channels`` channels.

    ``gn`` uses 32 groups as Wu & He's GroupNorm, fewer where a layer has fewer than 32 channels
    (the 16-filter first stage of the CIFAR nets).
    """
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if norm == "gn":
        return nn.GroupNorm(math.gcd(GN_GROUPS, channels), channels)
    if norm == "syncbn":
        return nn.SyncBatchNorm(channels)
    raise BackboneError(f"norm '{norm}' is not one of {', '.join(NORMS)}")
