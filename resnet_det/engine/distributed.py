"""Multi-process training under ``torchrun``: the device, and joining and leaving the process group.

One process per device. Without torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``) everything here works as a single process, so the same code runs everywhere.
Collectives carry a timeout so that a worker that dies or hangs makes the others fail with an
error instead of waiting forever. The rank helpers and collectives themselves live in
``resnet_det.utils.comm``, which evaluation uses too.
"""

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from resnet_det.errors import ConfigError, TrainingError

__all__ = ["DistInfo", "resolve_device", "init_distributed", "cleanup"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its global and node-local rank, the process count, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``train.device`` as a device: "auto" (a GPU if there is one), "cpu", "cuda" or "cuda:N".

    "auto" and "cuda" pick GPU ``local_rank``, the one torchrun gives this process.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec != "cuda" and not (spec.startswith("cuda:") and spec[5:].isdigit()):
        raise ConfigError(f"train.device={spec!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device={spec}: no CUDA GPU is available here; use train.device=cpu")
    index = local_rank if spec == "cuda" else int(spec[5:])
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(
            f"train.device={spec}: GPU {index} does not exist ({count} visible); use fewer processes or another index"
        )
    return torch.device("cuda", index)


def init_distributed(device: str = "auto", timeout_s: float = 600) -> DistInfo:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPUs) if launched by torchrun.

    ``timeout_s`` (``train.collective_timeout_s``) bounds every collective: when a worker dies or
    hangs, the others raise an error after that long instead of blocking forever.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and device.startswith("cuda:"):
        raise ConfigError(
            f"train.device={device} names one GPU but torchrun started {world_size} processes: use train.device=cuda"
        )
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        try:
            dist.init_process_group(
                backend="nccl" if dev.type == "cuda" else "gloo",
                timeout=datetime.timedelta(seconds=timeout_s),
                device_id=dev if dev.type == "cuda" else None,
            )
        except dist.DistError as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrainingError(
                f"rank {rank} could not join the other {world_size - 1} worker(s) within {timeout_s:g} s "
                f"({reason}); check that every worker started, or pass torchrun another --master_port"
            ) from e
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup() -> None:
    """Leave the process group (if any). A process that exits inside one can abort on the way out
    (gloo's threads: SIGABRT, "terminate called without an active exception") and NCCL warns."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
