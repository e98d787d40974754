"""Inference switches that change speed, never results: frozen-BN folding and channels-last.

A frozen BN is a fixed per-channel affine map ``y = x * scale + shift``; folded into the convolution
before it (``W' = W * scale``, ``b' = b * scale + shift``) it costs nothing at inference. That holds
for the C4 head's res5 too: it is the backbone's layer4 with the same frozen BN. Channels-last
(NHWC) is the layout cuDNN's fastest convolutions (tensor cores) use.
"""

import copy
from typing import Optional

import torch
from torch import nn

from backbones.norm import FrozenBatchNorm2d
from resnet_det.modeling.precision import Autocast
from resnet_det.modeling.transform import DetectionTransform


def _conv_before(parent: nn.Module, bn_name: str):
    """The convolution whose output ``parent.<bn_name>`` normalises, by torchvision's ResNet naming.

    ``bnK`` follows ``convK`` of the same block; in a ``Sequential`` (the projection shortcut,
    ``downsample``) the BN follows the module before it. Anything else is left unfolded.
    """
    if isinstance(parent, nn.Sequential) and bn_name.isdigit() and int(bn_name) > 0:
        conv = parent[int(bn_name) - 1]
    elif bn_name.startswith("bn"):
        conv = getattr(parent, "conv" + bn_name[2:], None)
    else:
        return None
    return conv if isinstance(conv, nn.Conv2d) else None


@torch.no_grad()
def fold_frozen_bn(model: nn.Module) -> nn.Module:
    """Fold every ``FrozenBatchNorm2d`` into the convolution before it, in place; returns ``model``.

    The convolution gains a bias and the BN becomes ``nn.Identity``. The state dict changes layout
    accordingly, so fold a copy meant for inference (``prepare_for_inference`` does).
    """
    for parent in list(model.modules()):
        for name, bn in list(parent.named_children()):
            if not isinstance(bn, FrozenBatchNorm2d):
                continue
            conv = _conv_before(parent, name)
            if conv is None or conv.out_channels != bn.weight.numel():
                continue
            scale, shift = bn.scale_and_shift()
            weight = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight)
            bias = shift.to(conv.weight) if conv.bias is None else conv.bias * scale + shift
            conv.weight.copy_(weight)
            conv.bias = nn.Parameter(bias, requires_grad=conv.weight.requires_grad)
            setattr(parent, name, nn.Identity())
    return model


def to_channels_last(model: nn.Module) -> nn.Module:
    """Convert 4-d weights to channels-last and make the transform batch images that way; in place."""
    model.to(memory_format=torch.channels_last)
    for module in model.modules():
        if isinstance(module, DetectionTransform):
            module.memory_format = torch.channels_last
    return model


def compile_backbone(model: nn.Module, backend: str) -> nn.Module:
    """Compile the detector's backbone with ``torch.compile`` (in place, keeping the state dict's
    names: ``Module.compile``, not a wrapper). The backbone is where the time goes and its shapes
    are few (see ``input.size_divisibility``); the RPN and RoI heads have data-dependent sizes."""
    model.backbone.compile(backend=backend, dynamic=False)
    return model


def prepare_for_inference(
    model: nn.Module,
    fold_bn: bool = True,
    channels_last: bool = True,
    compile_backend: Optional[str] = None,
    precision: str = "fp32",
) -> nn.Module:
    """A copy of ``model`` for inference (eval mode, no gradients), with the fast-path switches applied.

    A copy, because folding rewrites the modules: the model being trained (and checkpointed) is left
    as it was. A ``DistributedDataParallel`` wrapper is dropped, as inference needs no gradient sync.
    ``precision="bf16"`` (resolved by ``precision.resolve_precision``) wraps it in bf16 autocast.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    model = copy.deepcopy(model).eval().requires_grad_(False)
    for module in model.modules():
        # A copied compiled forward would still run the original module: compile the copy anew.
        module._compiled_call_impl = None
    if fold_bn:
        fold_frozen_bn(model)
    if channels_last:
        to_channels_last(model)
    if compile_backend:
        compile_backbone(model, compile_backend)
    return Autocast(model) if precision == "bf16" else model
