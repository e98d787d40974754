"""The iteration-based training loop shared by detection and classification.

The loop knows nothing of images or boxes: it is given a model, an optimiser and schedule, a
``make_loader(start_iter)`` that yields batches from any iteration on, and a ``step_fn`` that
turns a batch into losses. What it owns is everything around that: mixed precision, gradient
clipping, non-finite losses, periodic checkpoints and evaluation, logging, resuming, signals and
multi-process training, all under the run folder's lock (``run_lock``: one writer per folder).

Exact resumption: the checkpoint of iteration k holds the state the loop has right after
finishing iteration k (model, optimiser, schedule, grad scaler, and every RNG), so resuming from
it and training to N gives, on CPU, bit for bit the weights of an uninterrupted run to N, provided
``make_loader(k)`` yields the same batches the uninterrupted run saw from k on. An iteration's
evaluation runs before its checkpoint is written, so a schedule that reads evaluation metrics
(the plateau rule of ``solver.WarmupDecayLR``) is checkpointed with what it has seen.
"""

import contextlib
import logging
import os
import random
import re
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from resnet_det.config.validate import check_trainer_settings
from resnet_det.engine.checkpoint import FINAL_CHECKPOINT, Checkpointer, capture_rng_state, restore_rng_state
from resnet_det.engine.distributed import DistInfo
from resnet_det.engine.events import EventWriter
from resnet_det.engine.run_lock import hold_run_lock
from resnet_det.errors import CheckpointError, ConfigError, TrainingError
from resnet_det.utils.comm import all_gather_object, all_reduce_max, reduce_dict
from resnet_det.utils.file_io import remove_temporary_files

__all__ = ["Trainer", "TrainingInterrupted", "PREEMPTED_EXIT_STATUS", "set_deterministic", "StepFn", "EvalFn"]

logger = logging.getLogger(__name__)

StepFn = Callable[[nn.Module, Any], Tuple[Mapping[str, torch.Tensor], Mapping[str, float]]]
EvalFn = Callable[[nn.Module, int], Optional[Mapping[str, float]]]

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
# The exit status after SIGTERM or SIGUSR1 (a scheduler's preemption or time-limit warning):
# EX_TEMPFAIL of sysexits.h, "try again later". The checkpoint is saved, so running the same
# command with --resume continues the run; Ctrl-C (SIGINT) exits with the shell's 130 instead.
PREEMPTED_EXIT_STATUS = 75


class TrainingInterrupted(TrainingError):
    """SIGINT, SIGTERM or SIGUSR1 stopped training after saving the checkpoint of the current
    iteration; ``exit_status`` is what the tools exit with (``PREEMPTED_EXIT_STATUS``, or 130)."""

    def __init__(self, iteration: int, checkpoint: Path, signum: int):
        name = signal.Signals(signum).name
        super().__init__(
            f"{name}: interrupted at iteration {iteration}; checkpoint saved to {checkpoint}; resume with --resume"
        )
        self.iteration = iteration
        self.checkpoint = checkpoint
        self.signal = signum
        self.exit_status = 130 if signum == signal.SIGINT else PREEMPTED_EXIT_STATUS


def set_deterministic(seed: int, deterministic: bool = False, cudnn_benchmark: bool = False) -> None:
    """Seed Python, NumPy and torch (all GPUs); with ``deterministic``, also ask for
    deterministic kernels (warning, not failing, where an op has none, e.g. some CUDA backwards).

    Otherwise ``cudnn_benchmark`` lets cuDNN time its kernels per input shape (GPU only).
    Call it before building the model so that initial weights follow ``seed`` too.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this before its first use to be deterministic (see torch's reproducibility notes).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = cudnn_benchmark


def _amp_setup(device: torch.device, amp: bool) -> Tuple[Optional[torch.dtype], Optional[torch.amp.GradScaler]]:
    """The autocast dtype and the grad scaler (fp16 only) for ``amp`` on ``device``.

    bf16 has fp32's range, so it needs no loss scaling; GPUs without bf16 get fp16 with a
    GradScaler. On CPU, autocast runs in bf16 (supported by PyTorch on every CPU, fast on
    those with AVX-512 BF16/AMX), so ``train.amp`` means the same thing everywhere.
    """
    if not amp:
        return None, None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.bfloat16, None


# How a lost peer shows in an error: NCCL raises DistError subclasses, but gloo (and DDP's own
# collectives over it) raise plain RuntimeErrors, whose text is the only sign.
_PEER_FAILURE_MARKERS = ("gloo", "nccl", "pair closure", "connection reset", "connection closed", "timed out")


def _is_collective_failure(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, torch_dist.DistError) or any(m in text for m in _PEER_FAILURE_MARKERS)


def _first_line(error: BaseException, limit: int = 200) -> str:
    lines = str(error).strip().splitlines()
    line = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]) if lines else type(error).__name__  # drop "[file.cc:545] "
    return line[:limit]


class _Window:
    """Sums of the scalars and timings since the last report, for averaged log lines."""

    def __init__(self):
        self.sums: Dict[str, float] = defaultdict(float)
        self.counts: Dict[str, int] = defaultdict(int)
        self.iters = 0
        self.time = 0.0
        self.data_time = 0.0
        self.lr = 0.0  # the latest, not a mean: during warm-up a mean would lag

    def add(self, scalars: Mapping[str, float]) -> None:
        for key, value in scalars.items():
            self.sums[key] += value
            self.counts[key] += 1

    def means(self) -> Dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


class Trainer:
    """Train ``model`` from ``resume_or_start()``'s iteration to ``max_iter``; see the module doc.

    ``step_fn(model, batch) -> (losses, extras)``: the loss tensors to sum and back-propagate,
    and extra scalars to log (e.g. accuracy); it moves the batch to the model's device (and to
    channels-last when wanted). ``eval_fn(model, iteration) -> metrics`` runs every
    ``eval_period`` iterations (0: only at the end) on every rank; rank 0's metrics are logged.
    Periods are counted in completed iterations: the checkpoint ``model_0000100.pth`` holds the
    state after 100 iterations.
    """

    @classmethod
    def from_config(cls, cfg, *, dist: DistInfo, max_iter: Optional[int] = None, **parts) -> "Trainer":
        """A trainer with the settings of ``cfg.solver`` and ``cfg.train`` (shared by detection and
        classification); ``parts`` are the run's own: model, optimizer, scheduler, make_loader,
        step_fn, eval_fn, meta."""
        from omegaconf import OmegaConf

        return cls(
            max_iter=cfg.solver.max_iter if max_iter is None else max_iter,
            output_dir=cfg.train.output_dir,
            checkpoint_period=cfg.train.checkpoint_period,
            log_period=cfg.train.log_period,
            eval_period=cfg.train.eval_period,
            device=dist.device,
            amp=cfg.train.amp,
            clip_grad_norm=cfg.solver.clip_grad_norm,
            nonfinite_loss=cfg.solver.nonfinite_loss,
            config_text=OmegaConf.to_yaml(cfg, resolve=True),
            max_keep=cfg.train.max_checkpoints_kept,
            dist=dist,
            channels_last=cfg.train.channels_last and dist.device.type == "cuda",
            **parts,
        )

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        make_loader: Callable[[int], Iterable],
        step_fn: StepFn,
        max_iter: int,
        output_dir: os.PathLike,
        checkpoint_period: int,
        log_period: int = 20,
        eval_fn: Optional[EvalFn] = None,
        eval_period: int = 0,
        device: Optional[torch.device] = None,
        amp: bool = False,
        clip_grad_norm: Optional[float] = None,
        nonfinite_loss: str = "stop",
        meta: Optional[Mapping[str, Any]] = None,
        config_text: str = "",
        max_keep: Optional[int] = 3,
        dist: Optional[DistInfo] = None,
        progress: bool = True,
        channels_last: bool = False,
    ):
        check_trainer_settings(max_iter, checkpoint_period, log_period, eval_period, nonfinite_loss)
        self.dist = dist if dist is not None else DistInfo(device=device or torch.device("cpu"))
        self.device = device if device is not None else self.dist.device
        self.max_iter = max_iter
        self.output_dir = Path(output_dir)
        self.checkpoint_period = checkpoint_period
        self.log_period = log_period
        self.eval_fn = eval_fn
        self.eval_period = eval_period
        self.clip_grad_norm = clip_grad_norm
        self.nonfinite_loss = nonfinite_loss
        self.meta = dict(meta or {})
        self.config_text = config_text
        self.progress = progress
        self.make_loader = make_loader
        self.step_fn = step_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.autocast_dtype, self.scaler = _amp_setup(self.device, amp)
        self.checkpointer = Checkpointer(self.output_dir, max_keep=max_keep, is_main=self.dist.is_main)

        model.to(self.device)
        if channels_last and self.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        self.module = model  # what checkpoints and eval_fn see, never the DDP wrapper
        self.model: nn.Module = model  # what step_fn runs: DDP-wrapped when several processes train
        if self.dist.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(model, device_ids=device_ids)

        self.start_iter: Optional[int] = None
        self.iter = 0
        self.skipped_steps = 0
        self._stop_signal: Optional[int] = None
        self._pid = os.getpid()

    # -- resuming ------------------------------------------------------------------------------

    def resume_or_start(self, resume: bool) -> int:
        """Restore the newest good checkpoint (``resume``) or start at 0; return the start iteration.

        Without ``resume``, a folder that already holds checkpoints is refused rather than mixed
        with, or overwritten by, a new run; with it, so is a folder whose checkpoints all fail to
        load. Both are decided under the folder's lock (see ``run_lock``) before anything is
        written; then the temporary files of saves that a crash cut short are removed.
        """
        with hold_run_lock(self.output_dir, self.dist.is_main):
            start = self._resume_or_start(resume)
            if self.dist.is_main:
                removed = remove_temporary_files(self.output_dir)
                if removed:
                    logger.warning(
                        "removed %d temporary file(s) of a save that was cut short: %s",
                        len(removed),
                        ", ".join(p.name for p in removed),
                    )
        return start

    def _resume_or_start(self, resume: bool) -> int:
        if not resume:
            if self.checkpointer.has_checkpoint():
                raise ConfigError(
                    f"{self.output_dir} already holds checkpoints: pass --resume to continue it, "
                    "or choose another --output"
                )
            self.start_iter = self.iter = 0
            return 0
        state = self.checkpointer.load_latest()
        if state is None and self.checkpointer.has_checkpoint():
            raise CheckpointError(
                f"--resume: no checkpoint in {self.output_dir} can be resumed ({', '.join(self._checkpoint_names())}; "
                "the warnings above say why): move them away to start over, or choose another --output"
            )
        if state is None:
            logger.info("no checkpoint to resume in %s; starting from scratch", self.output_dir)
            self.start_iter = self.iter = 0
            return 0
        self._restore(state)
        self.start_iter = self.iter = int(state["iteration"])
        logger.info("resumed %s at iteration %d", self.output_dir, self.start_iter)
        return self.start_iter

    def _checkpoint_names(self) -> List[str]:
        paths = set(self.checkpointer.periodic_checkpoints())
        latest = self.checkpointer.latest()
        if latest is not None:
            paths.add(latest)  # also when last_checkpoint names a file that is gone
        final = self.output_dir / FINAL_CHECKPOINT
        if final.is_file():
            paths.add(final)  # holds no optimiser state: it cannot be resumed
        return sorted(p.name for p in paths)

    def _restore(self, state: Dict[str, Any]) -> None:
        source = self.checkpointer.path_for(int(state["iteration"]))
        try:
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint {source} does not fit this model or optimiser ({_first_line(e)}); "
                "resume with the config that wrote it, or choose another --output"
            ) from e
        per_rank = state.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == self.dist.world_size:
            restore_rng_state(per_rank[self.dist.rank])
        else:
            restore_rng_state(state["rng"])
        self.skipped_steps = int(state.get("skipped_steps", 0))

    def _state(self) -> Dict[str, Any]:
        rng = capture_rng_state()
        state = {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng,
            "config": self.config_text,
            "meta": self.meta,
            "skipped_steps": self.skipped_steps,
        }
        if self.dist.world_size > 1:
            # Each rank draws its own random numbers (e.g. RPN sampling on its own GPU stream).
            state["rng_per_rank"] = all_gather_object(rng)
        return state

    def _sync_buffers(self) -> None:
        """Give every replica rank 0's buffers (BatchNorm's running statistics).

        DDP broadcasts them at the start of each forward, so training is unchanged; but after the
        last step each rank holds the statistics of its own batch, and sharded evaluation would
        otherwise run a slightly different model on each rank than the one rank 0 saves.
        """
        if self.dist.world_size > 1:
            for buffer in self.module.buffers():
                torch_dist.broadcast(buffer, src=0)

    def _save(self) -> Path:
        state = self._state()
        path = self.checkpointer.save(self.iter, state)
        if self.iter == self.max_iter:
            # The finished model for evaluation and fine-tuning; no optimiser state to carry.
            final = {k: state[k] for k in ("model", "config", "meta")}
            self.checkpointer.save_final({**final, "iteration": self.iter})
        return path

    # -- signals -------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked data-loader worker: the training process decides when to stop
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._stop_signal = signum
        logger.warning(
            "%s received: finishing iteration %d, then saving a checkpoint (Ctrl-C again stops at once)",
            signal.Signals(signum).name,
            self.iter + 1,
        )

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in _STOP_SIGNALS}
        for s in _STOP_SIGNALS:
            signal.signal(s, self._on_signal)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    # -- the loop ------------------------------------------------------------------------------

    def train(self) -> Dict[str, float]:
        """Run to ``max_iter``; return the last logged scalars and the final evaluation metrics.

        Raises TrainingError for a non-finite loss (policy "stop") or a failed worker, and
        TrainingInterrupted after SIGINT/SIGTERM/SIGUSR1 once the current iteration is checkpointed.
        """
        if self.start_iter is None:
            raise RuntimeError("call resume_or_start() before train()")
        if self.start_iter >= self.max_iter:
            logger.info("%s is already trained to iteration %d; nothing to do", self.output_dir, self.max_iter)
            return {"iteration": float(self.start_iter)}
        self._stop_signal = None
        with contextlib.ExitStack() as stack:
            stack.enter_context(hold_run_lock(self.output_dir, self.dist.is_main))
            stack.enter_context(self._stop_on_signals())
            events = (
                stack.enter_context(
                    EventWriter(
                        self.output_dir, max_iter=self.max_iter, start_iter=self.start_iter, progress=self.progress
                    )
                )
                if self.dist.is_main
                else None
            )
            try:
                return self._loop(events)
            except RuntimeError as e:
                if self.dist.world_size > 1 and _is_collective_failure(e):
                    raise TrainingError(
                        f"another worker stopped (rank {self.dist.rank} lost it at iteration {self.iter + 1}: "
                        f"{_first_line(e)}); stopping; see the other workers' output, then resume with --resume"
                    ) from e
                raise

    def _loop(self, events: Optional[EventWriter]) -> Dict[str, float]:
        self.model.train()
        loader = iter(self.make_loader(self.start_iter))
        window = _Window()
        results: Dict[str, float] = {}
        while self.iter < self.max_iter:
            start = time.perf_counter()
            try:
                batch = next(loader)
            except StopIteration:
                raise RuntimeError(
                    f"the loader of make_loader({self.start_iter}) ended at iteration {self.iter}: "
                    "it must yield batches until max_iter"
                ) from None
            window.data_time += time.perf_counter() - start

            stop = self._run_step(batch, window)
            self.iter += 1
            window.iters += 1
            window.time += time.perf_counter() - start
            if events is not None:
                events.advance(self.iter)

            if self.iter % self.log_period == 0 or self.iter == self.max_iter:
                results = self._report(window, events)
                window = _Window()
            evaluate = self.eval_fn is not None and (
                (self.eval_period and self.iter % self.eval_period == 0) or self.iter == self.max_iter
            )
            save = self.iter % self.checkpoint_period == 0 or self.iter == self.max_iter or stop
            if evaluate or save:
                self._sync_buffers()
            # Evaluation before the checkpoint: a schedule that reads its metrics (the plateau
            # rule) then resumes from a state that has seen them.
            if evaluate:
                metrics = self._evaluate(events)
                if self.iter == self.max_iter:
                    results.update(metrics)
            if save:
                checkpoint = self._save()
            if stop and self.iter < self.max_iter:
                raise TrainingInterrupted(self.iter, checkpoint, self._stop_signal or signal.SIGTERM)
        return results

    def _run_step(self, batch: Any, window: _Window) -> bool:
        """One optimiser step on ``batch``; returns whether all ranks agreed to stop afterwards."""
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            losses, extras = self.step_fn(self.model, batch)
        total = sum(losses.values())
        # One small collective so that every rank takes the same branch: skipping or stopping
        # alone would leave the others waiting in the next all-reduce.
        flags = torch.tensor([not bool(torch.isfinite(total)), self._stop_signal is not None], dtype=torch.float32)
        nonfinite, stop = (bool(f) for f in all_reduce_max(flags).tolist())
        window.lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        if nonfinite:
            self._nonfinite(losses, here=not bool(torch.isfinite(total)))
        else:
            # Read before backward: the values are ready (isfinite synchronised), so this does
            # not wait for the backward kernels.
            scalars = {"total_loss": float(total.detach()), **{k: float(v.detach()) for k, v in losses.items()}}
            scalars.update((k, float(v)) for k, v in extras.items())
            if self.scaler is not None:
                self.scaler.scale(total).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                total.backward()
            if self.clip_grad_norm is not None:
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                scalars["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm))
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            window.add(scalars)
        self.scheduler.step()
        return stop

    def _nonfinite(self, losses: Mapping[str, torch.Tensor], here: bool) -> None:
        """Skip or stop on a non-finite loss of this rank (``here``) or of another one."""
        values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
        what = f"non-finite loss at iteration {self.iter + 1} " + (
            f"({values})" if here else f"on another worker (rank {self.dist.rank} had {values})"
        )
        if self.nonfinite_loss == "skip":
            self.skipped_steps += 1
            logger.warning("%s: step skipped (%d so far)", what, self.skipped_steps)
            return
        last = self.checkpointer.latest()
        kept = f"the last good checkpoint {last} is kept" if last is not None else "no checkpoint was written yet"
        raise TrainingError(
            f"{what}; {kept}; lower solver.base_lr, set solver.clip_grad_norm, or set solver.nonfinite_loss=skip"
        )

    def _report(self, window: _Window, events: Optional[EventWriter]) -> Dict[str, float]:
        scalars = window.means()
        if self.dist.world_size > 1:
            scalars = reduce_dict(scalars)
        seconds_per_iter = window.time / window.iters
        scalars.update(
            lr=window.lr,
            time=seconds_per_iter,
            data_time=window.data_time / window.iters,
            eta_seconds=seconds_per_iter * (self.max_iter - self.iter),
        )
        if self.skipped_steps:
            scalars["skipped_steps"] = self.skipped_steps
        if self.device.type == "cuda":
            scalars["max_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        if events is not None:
            events.write(self.iter, scalars)
        return {"iteration": float(self.iter), **scalars}

    def _evaluate(self, events: Optional[EventWriter]) -> Dict[str, float]:
        # Evaluation must not change training: its random draws are undone, so the weights at
        # max_iter do not depend on eval_period (unless the schedule reads the metrics, by
        # design), and a resumed run need not repeat evaluations.
        rng = capture_rng_state()
        self.module.eval()
        try:
            metrics = dict(self.eval_fn(self.module, self.iter) or {})
        finally:
            self.module.train()
            restore_rng_state(rng)
        metrics = {k: float(v) for k, v in metrics.items()}
        if events is not None and metrics:
            events.write(self.iter, metrics)
        return metrics
