"""Rank helpers and collectives that work the same in one process and under ``torchrun``.

Without an initialised process group every helper answers for a single process (rank 0 of 1), so
evaluation and data code call them unconditionally. Joining the group is the engine's business
(``engine.distributed.init_distributed``).
"""

import os
from typing import Any, Dict, List, Mapping, Union

import torch
import torch.distributed as dist

from resnet_det.errors import ConfigError

__all__ = [
    "per_process_batch_size",
    "is_main_process",
    "get_rank",
    "get_local_rank",
    "get_world_size",
    "barrier",
    "all_gather_object",
    "reduce_dict",
    "all_reduce_max",
]


def per_process_batch_size(batch_size: int, world_size: int) -> int:
    """Split ``solver.batch_size`` (images per iteration over all processes) evenly among them."""
    if batch_size < world_size or batch_size % world_size:
        raise ConfigError(
            f"solver.batch_size={batch_size} does not divide among {world_size} processes: "
            f"use a multiple of {world_size}"
        )
    return batch_size // world_size


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_local_rank() -> int:
    """This process's rank on its machine: torchrun's ``LOCAL_RANK`` (0 in a single process)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if get_world_size() > 1 else 0


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if get_world_size() == 1:
        return [obj]
    gathered: List[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def _collective_device() -> torch.device:
    # NCCL reduces only CUDA tensors; gloo only CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_dict(values: Mapping[str, Union[float, torch.Tensor]]) -> Dict[str, float]:
    """The mean of each scalar over all ranks, for logging (every rank must pass the same keys)."""
    keys = sorted(values)
    if get_world_size() == 1 or not keys:
        return {k: float(values[k]) for k in keys}
    stacked = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(stacked)
    stacked /= get_world_size()
    return dict(zip(keys, stacked.tolist()))


def all_reduce_max(flags: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over ranks: "did any rank ...?" for decisions all ranks must share."""
    if get_world_size() == 1:
        return flags
    flags = flags.to(_collective_device())
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags.cpu()
