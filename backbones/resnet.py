"""The ImageNet ResNets and plain nets of the paper's Table 1, laid out as torchvision's.

Module names are torchvision's (``conv1``, ``bn1``, ``layer1``..``layer4``, ``fc``; in blocks
``conv1``/``bn1``.., ``downsample.0``/``.1``), so its state dicts load as they are, and with shortcut
option B the parameter counts are torchvision's. Two choices of the paper are options:

- ``shortcut``: where dimensions change, A = identity subsampled and zero-padded (no parameters),
  B = a 1x1 projection (conv + norm); C = projections on every block.
- ``stride_in_1x1``: a bottleneck downsamples in its first 1x1 conv (the paper's and MSRA's models)
  or in its 3x3 (torchvision's "v1.5", as its weights expect; more multiply-adds, slightly better).

Plain nets are the same stacks without shortcuts.
"""

import functools
from typing import Any, Dict, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn

from .errors import BackboneError
from .models import register_model
from .norm import get_norm

SHORTCUTS = ("A", "B", "C")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: the identity subsampled by ``stride``, the extra channels zeros (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def check_shortcut(shortcut: str) -> str:
    if shortcut not in SHORTCUTS:
        raise BackboneError(f"shortcut {shortcut!r} is not one of {', '.join(SHORTCUTS)}")
    return shortcut


def make_shortcut(
    shortcut: Optional[str], in_channels: int, out_channels: int, stride: int, norm: str
) -> Optional[nn.Module]:
    """The shortcut branch of a block; None = the identity (or no shortcut, for ``shortcut`` None)."""
    changes = stride != 1 or in_channels != out_channels
    if shortcut == "C" or (shortcut == "B" and changes):
        return nn.Sequential(conv1x1(in_channels, out_channels, stride), get_norm(norm, out_channels))
    if shortcut == "A" and changes:
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return None


class _Block(nn.Module):
    """What the two blocks share: the shortcut, added before the last ReLU (none in plain nets)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int, norm: str, shortcut: Optional[str]):
        super().__init__()
        self.out_channels = channels * self.expansion
        self.stride = stride
        self.residual = shortcut is not None
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(shortcut, in_channels, self.out_channels, stride, norm)

    def _join(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class BasicBlock(_Block):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR nets)."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        *,
        norm: str = "bn",
        shortcut: Optional[str] = "B",
    ):
        super().__init__(in_channels, channels, stride, norm, shortcut)
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = get_norm(norm, channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = get_norm(norm, channels)

    @property
    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self._join(self.bn2(self.conv2(out)), x)


class Bottleneck(_Block):
    """1x1 (reduce) - 3x3 - 1x1 (expand x4) convolutions (ResNet-50/101/152)."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        *,
        norm: str = "bn",
        shortcut: Optional[str] = "B",
        stride_in_1x1: bool = True,
    ):
        super().__init__(in_channels, channels, stride, norm, shortcut)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, channels, stride_1x1)
        self.bn1 = get_norm(norm, channels)
        self.conv2 = conv3x3(channels, channels, stride_3x3)
        self.bn2 = get_norm(norm, channels)
        self.conv3 = conv1x1(channels, self.out_channels)
        self.bn3 = get_norm(norm, self.out_channels)

    @property
    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self._join(self.bn3(self.conv3(out)), x)


def make_stage(
    block: Type[_Block], in_channels: int, channels: int, num_blocks: int, stride: int, **block_options
) -> nn.Sequential:
    """``num_blocks`` blocks; the first one changes the stride and the width."""
    blocks = [block(in_channels, channels, stride, **block_options)]
    blocks += [block(channels * block.expansion, channels, 1, **block_options) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


def init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """He initialisation of the convolutions (normal, fan_out, as torchvision); norm layers start
    as the identity. ``zero_init_residual`` zeroes each residual branch's last norm, so that every
    block starts as the identity (Goyal et al.)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif zero_init_residual and isinstance(module, _Block) and module.residual:
            nn.init.zeros_(module.last_norm.weight)  # type: ignore[union-attr, arg-type]  # a norm layer


# depth -> (block, blocks per stage), Table 1
ARCHITECTURES: Dict[int, Tuple[Type[_Block], Tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """The ImageNet network of Table 1: 7x7/2 conv and 3x3/2 max pool, four stages of 64..512
    (x4 for bottlenecks) filters at strides 4..32, global average pool, fc.

    ``shortcut`` None builds the plain net.
    """

    input_size = 224  # the resolution it is designed for (Table 1's multiply-adds)
    layer1: nn.Sequential  # the four stages, added by name in __init__
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self,
        depth: int,
        num_classes: int = 1000,
        *,
        shortcut: Optional[str] = "B",
        stride_in_1x1: bool = True,
        norm: str = "bn",
        zero_init_residual: bool = False,
    ):
        super().__init__()
        block, layers = ARCHITECTURES[depth]
        block_options: Dict[str, Any] = {"norm": norm, "shortcut": shortcut}
        if block is Bottleneck:
            block_options["stride_in_1x1"] = stride_in_1x1
        self.options = {
            "shortcut": shortcut,
            "stride_in_1x1": stride_in_1x1,
            "norm": norm,
            "zero_init_residual": zero_init_residual,
        }

        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = get_norm(norm, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, (channels, num_blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if index == 0 else 2
            stage = make_stage(block, in_channels, channels, num_blocks, stride, **block_options)
            self.add_module(f"layer{index + 1}", stage)
            in_channels = channels * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self, zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _build(
    depth: int,
    residual: bool,
    num_classes: int = 1000,
    shortcut: Optional[str] = None,
    stride_in_1x1: Optional[bool] = None,
    norm: str = "bn",
    zero_init_residual: bool = False,
) -> ResNet:
    """Defaults: shortcut B, the stride in the 1x1 as the paper. Plain nets have no shortcut, so
    ``shortcut`` and ``zero_init_residual`` do not apply to them."""
    shortcut = check_shortcut(shortcut or "B")
    return ResNet(
        depth,
        num_classes,
        shortcut=shortcut if residual else None,
        stride_in_1x1=True if stride_in_1x1 is None else stride_in_1x1,
        norm=norm,
        zero_init_residual=zero_init_residual and residual,
    )


for _depth in ARCHITECTURES:
    register_model(f"r{_depth}")(functools.partial(_build, _depth, True))
    register_model(f"plain{_depth}")(functools.partial(_build, _depth, False))
