"""The CIFAR-10 nets of the paper's section 4.2: 6n+2 layers on 32x32 inputs.

A 3x3 conv of 16 filters, then three stages of n basic blocks (2n layers) with 16, 32 and 64
filters on 32x32, 16x16 and 8x8 maps, global average pool and a 10-way fc. Shortcuts are option A
by default, as in the paper (Table 6: ResNet-20 0.27M parameters .. ResNet-1202 19.4M). Modules are
named as the ImageNet nets' (``conv1``, ``bn1``, ``layer1``..``layer3``, ``fc``), so that the same
backbone and weight code serves both.
"""

from typing import Optional

import torch
from torch import nn

from .errors import BackboneError
from .models import register_model
from .norm import get_norm
from .resnet import BasicBlock, check_shortcut, init_weights, make_stage


class CifarResNet(nn.Module):
    """``shortcut`` None builds the plain net."""

    input_size = 32
    layer1: nn.Sequential  # the three stages, added by name in __init__
    layer2: nn.Sequential
    layer3: nn.Sequential

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        *,
        shortcut: Optional[str] = "A",
        norm: str = "bn",
        zero_init_residual: bool = False,
    ):
        super().__init__()
        blocks_per_stage = (depth - 2) // 6
        self.options = {"shortcut": shortcut, "norm": norm, "zero_init_residual": zero_init_residual}

        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = get_norm(norm, 16)
        self.relu = nn.ReLU(inplace=True)
        in_channels = 16
        for index, channels in enumerate((16, 32, 64)):
            stride = 1 if index == 0 else 2
            options = {"norm": norm, "shortcut": shortcut}
            stage = make_stage(BasicBlock, in_channels, channels, blocks_per_stage, stride, **options)
            self.add_module(f"layer{index + 1}", stage)
            in_channels = channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        init_weights(self, zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _builder(residual: bool):
    prefix = "cifar_r" if residual else "cifar_plain"

    def build(
        depth: int,
        num_classes: int = 10,
        shortcut: Optional[str] = None,
        norm: str = "bn",
        zero_init_residual: bool = False,
        stride_in_1x1: Optional[bool] = None,
    ) -> CifarResNet:
        """Default shortcut A. ``stride_in_1x1`` does not apply (no bottlenecks); plain nets have
        no shortcut, so ``shortcut`` and ``zero_init_residual`` do not apply to them."""
        if depth < 8 or (depth - 2) % 6:
            raise BackboneError(
                f"{prefix}{depth}: depth must be 6n+2 with n >= 1 (e.g. {prefix}20, {prefix}56, {prefix}110)"
            )
        shortcut = check_shortcut(shortcut or "A")
        return CifarResNet(
            depth,
            num_classes,
            shortcut=shortcut if residual else None,
            norm=norm,
            zero_init_residual=zero_init_residual and residual,
        )

    return build


register_model("cifar_r{6n+2}")(_builder(residual=True))
register_model("cifar_plain{6n+2}")(_builder(residual=False))
