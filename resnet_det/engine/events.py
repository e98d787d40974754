"""Where training reports go: ``metrics.jsonl``, TensorBoard and a progress bar (rank 0 only).

``metrics.jsonl`` holds one JSON object per line, flushed as it is written, so a killed run keeps
every line it logged; it is the record to plot or compare runs from. TensorBoard gets the same
scalars under ``tb/``. The progress bar is for people at a terminal and stays off otherwise
(where an INFO log line per report takes its place).
"""

import datetime
import json
import logging
import os
import sys
from pathlib import Path
from typing import Mapping

from tqdm import tqdm

from resnet_det.evaluation.curves import METRICS_FILE
from resnet_det.utils.file_io import atomic_write_text, json_lines

__all__ = ["EventWriter", "truncate_metrics", "METRICS_FILE"]

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "tb"
# Scalars the console line leaves out: ETA and timings are shown in their own form.
_NOT_IN_POSTFIX = ("iteration", "eta_seconds", "time", "data_time")


def truncate_metrics(path: os.PathLike, iteration: int) -> None:
    """Drop the lines of ``path`` logged after ``iteration`` (and any torn last line).

    A resumed run repeats the iterations after its checkpoint; without this they would appear
    twice, and the later copy would not be the run that the checkpoints continue.
    """
    path = Path(path)
    if not path.is_file():
        return
    text = path.read_text()
    kept = [line for line, record in json_lines(text) if record.get("iteration", iteration + 1) <= iteration]
    if "".join(kept) != text:
        atomic_write_text(path, "".join(kept))


def _format(value: float) -> str:
    return f"{value:.4g}"


class EventWriter:
    """Writes training scalars for rank 0; create it in the main process only.

    ``start_iter`` is where this (possibly resumed) run begins: later lines left by an earlier
    attempt are dropped from ``metrics.jsonl``, and TensorBoard purges its events past that step.
    """

    def __init__(self, output_dir: os.PathLike, *, max_iter: int, start_iter: int = 0, progress: bool = True):
        from torch.utils.tensorboard import SummaryWriter  # slow to import; only rank 0 needs it

        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.output_dir / METRICS_FILE
        truncate_metrics(self.metrics_path, start_iter)
        self._metrics = open(self.metrics_path, "a", encoding="utf-8")
        self._tb = SummaryWriter(log_dir=str(self.output_dir / TENSORBOARD_DIR), purge_step=start_iter + 1)
        self._bar = tqdm(
            total=max_iter,
            initial=start_iter,
            desc="train",
            unit="it",
            dynamic_ncols=True,
            disable=not (progress and sys.stderr.isatty()),
        )
        self.max_iter = max_iter

    def advance(self, iteration: int) -> None:
        """Move the progress bar to ``iteration`` completed iterations."""
        self._bar.update(iteration - self._bar.n)

    def write(self, iteration: int, scalars: Mapping[str, float]) -> None:
        """Record ``scalars`` at ``iteration``: one metrics.jsonl line, TensorBoard, the console."""
        record = {"iteration": iteration, **{k: float(v) for k, v in scalars.items()}}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        for key, value in record.items():
            if key != "iteration":
                self._tb.add_scalar(key, value, iteration)
        self._tb.flush()
        shown = {k: _format(v) for k, v in record.items() if k not in _NOT_IN_POSTFIX}
        if not self._bar.disable:
            self._bar.set_postfix(shown, refresh=True)
        else:
            eta = record.get("eta_seconds")
            eta_text = f"  eta {datetime.timedelta(seconds=round(eta))}" if eta is not None else ""
            fields = "  ".join(f"{k} {v}" for k, v in shown.items())
            logger.info("iter %d/%d  %s%s", iteration, self.max_iter, fields, eta_text)

    def write_note(self, iteration: int, fields: Mapping[str, object]) -> None:
        """A metrics.jsonl line that is not scalars (why training stopped): neither plotted nor
        sent to TensorBoard."""
        self._metrics.write(json.dumps({"iteration": iteration, **fields}) + "\n")
        self._metrics.flush()

    def close(self) -> None:
        self._bar.close()
        self._tb.close()
        self._metrics.close()

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
