"""Training machinery shared by detection and classification: the loop, checkpoints, the
optimiser and schedule, metrics, and multi-process helpers."""

from resnet_det.engine.checkpoint import Checkpointer
from resnet_det.engine.distributed import DistInfo, init_distributed, resolve_device
from resnet_det.engine.events import EventWriter
from resnet_det.engine.solver import build_lr_scheduler, build_optimizer, scaled_lr
from resnet_det.engine.trainer import Trainer, TrainingInterrupted, set_deterministic

__all__ = [
    "Checkpointer",
    "DistInfo",
    "init_distributed",
    "resolve_device",
    "EventWriter",
    "build_lr_scheduler",
    "build_optimizer",
    "scaled_lr",
    "Trainer",
    "TrainingInterrupted",
    "set_deterministic",
]
