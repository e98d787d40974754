"""Model complexity as the paper reports it: parameters and multiply-adds (Table 1, Table 6).

Multiply-adds are counted by ``torch.utils.flop_counter`` (convolutions and matrix products; one
multiply-add is two FLOPs) on the meta device: no computation, no memory for activations, and
the model's weights and BatchNorm statistics are not touched.
"""

from itertools import chain
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """Parameters (not buffers: frozen BatchNorm's affine is not counted), shared ones once."""
    return sum(parameter.numel() for parameter in model.parameters())


def meta_forward(module: nn.Module, input_shape: Sequence[int]):
    """``module``'s output for an input of ``input_shape``, computed on the meta device: shapes only.

    Runs with meta stand-ins of the parameters and buffers, so the module itself is left as it was
    (in training mode too, where BatchNorm would otherwise update its statistics).
    """
    tensors = {
        name: torch.empty_like(tensor, device="meta")
        for name, tensor in chain(module.named_parameters(), module.named_buffers())
    }
    dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
    x = torch.empty(*input_shape, dtype=dtype, device="meta")
    with torch.no_grad():
        return torch.func.functional_call(module, tensors, (x,))


def count_multiply_adds(model: nn.Module, input_size: int = 224) -> int:
    """Multiply-adds of one forward pass on a 3 x ``input_size`` x ``input_size`` image."""
    with FlopCounterMode(display=False) as counter:
        meta_forward(model, (1, 3, input_size, input_size))
    return counter.get_total_flops() // 2
