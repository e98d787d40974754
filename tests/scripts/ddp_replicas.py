"""Run tools/train_det.py's training under torchrun and save each rank's final weights.

The replica-equality test needs every rank's model, but only rank 0 writes checkpoints. This wraps
``Trainer.train`` (the real loop, nothing replaced) so that after training each rank saves its own
``module.state_dict()`` to ``<output>/rank<k>.pth``.
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import train_det  # noqa: E402

from resnet_det.engine.trainer import Trainer  # noqa: E402

_train = Trainer.train


def _train_and_dump(self):
    result = _train(self)
    torch.save(self.module.state_dict(), self.output_dir / f"rank{self.dist.rank}.pth")
    return result


Trainer.train = _train_and_dump

if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    train_det.main(sys.argv[1:])
    # Exiting inside the process group can abort a rank in gloo's threads after a finished run.
    assert not torch.distributed.is_initialized(), "train_det.py left the process group joined"
