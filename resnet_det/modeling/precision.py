"""Inference precision: fp32, or bf16 autocast where the hardware computes in bf16.

Unlike the fast-path switches (``fast_path``), bf16 changes results a little: convolutions and
matrix products run in bf16 (8 bits of mantissa), the rest (box decoding, NMS, RoI pooling) in
fp32. It is offered only where it is native: CUDA devices with bf16 support, and CPUs with
AVX-512 BF16 or AMX (the ``avx512_bf16`` / ``amx_bf16`` flags of ``/proc/cpuinfo``); elsewhere
PyTorch would emulate it, slower than fp32. ``test.precision: auto`` picks what docs/benchmarks.md
measured fastest among the paths that pass the accuracy bar (AP on shapes_val within 0.5 points
of fp32): see ``AUTO_CHOICE``.
"""

from pathlib import Path
from typing import Dict, List

import torch
from torch import Tensor, nn

from resnet_det.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
# What ``auto`` chooses where bf16 is native, per device type. CPU: from docs/benchmarks.md ("Deploy
# paths"), bf16 autocast ran R50-FPN at 3.19x the stock model's images/s (fp32: 1.18x, onnxruntime
# 1.33x) on AVX-512 BF16 / AMX, and cost 0.4 AP points on the demo's detector (the bar: 0.5).
# CUDA: tensor cores.
AUTO_CHOICE = {"cpu": "bf16", "cuda": "bf16"}


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (Linux ``/proc/cpuinfo`` flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def bf16_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for ``test.precision`` on ``device``; ``bf16`` where it is not native
    is refused (it would be emulated, slower than fp32)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"test.precision={precision}: give one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return AUTO_CHOICE.get(device.type, "fp32") if bf16_native(device) else "fp32"
    if precision == "bf16" and not bf16_native(device):
        raise ConfigError(
            f"test.precision=bf16: {device.type} has no native bf16 here (CPU: AVX-512 BF16 or AMX; GPU: "
            "Ampere or later): use test.precision=fp32 (or auto)"
        )
    return precision


class Autocast(nn.Module):
    """``model`` run under bf16 autocast, its detections returned in fp32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: List[Tensor], targets=None) -> List[Dict[str, Tensor]]:
        device = images[0].device.type if images else "cpu"
        with torch.autocast(device, dtype=torch.bfloat16):
            outputs = self.model(images)
        return [{k: v.float() if v.is_floating_point() else v for k, v in out.items()} for out in outputs]
