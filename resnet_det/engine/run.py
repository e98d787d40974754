"""One training run's set-up, shared by detection and classification.

The order is the guarantee: join the process group and check that ``solver.batch_size`` divides
among the processes, take the run folder's lock, seed every rank; the task builds its trainer; then
the trainer accepts the folder (a new run where no checkpoint is, or ``--resume``) and only after
that does rank 0 write ``config.yaml``. A refused call (another writer holds the lock, the folder
holds checkpoints without ``--resume``, a bad batch size) leaves the folder as it was.
"""

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig

from resnet_det.config import save_config
from resnet_det.engine.distributed import DistInfo, cleanup, init_distributed
from resnet_det.engine.run_lock import hold_run_lock
from resnet_det.engine.trainer import Trainer, set_deterministic
from resnet_det.utils.comm import per_process_batch_size

__all__ = ["TrainingRun", "training_run"]


@dataclass(frozen=True)
class TrainingRun:
    """A run whose folder this process holds: where it is, this process's rank and device."""

    dist: DistInfo
    output_dir: Path
    resume: bool

    def start(self, trainer: Trainer, cfg: DictConfig) -> int:
        """Let ``trainer`` accept the folder (resume, or refuse one that holds checkpoints), then
        write the config that really runs (``cfg``) as ``config.yaml``; return the start iteration."""
        start = trainer.resume_or_start(self.resume)
        if self.dist.is_main:
            save_config(cfg, self.output_dir / "config.yaml")
        return start


@contextlib.contextmanager
def training_run(cfg: DictConfig, resume: bool = False, force_unlock: bool = False) -> Iterator[TrainingRun]:
    """Join the processes, hold the run folder's lock and seed this rank for the ``with`` block;
    leave the process group after it (a process that exits inside one can abort in gloo's threads).

    ``force_unlock`` takes over a lock that a process on another host left (see ``run_lock``).
    """
    dist = init_distributed(cfg.train.device, cfg.train.collective_timeout_s)
    try:
        per_process_batch_size(cfg.solver.batch_size, dist.world_size)
        output_dir = Path(cfg.train.output_dir)
        with hold_run_lock(output_dir, dist.is_main, force=force_unlock):
            set_deterministic(cfg.train.seed + dist.rank, cfg.train.deterministic, cfg.train.cudnn_benchmark)
            yield TrainingRun(dist=dist, output_dir=output_dir, resume=resume)
    finally:
        cleanup()
