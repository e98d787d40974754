"""The iteration-based training loop shared by detection and classification.

The loop knows nothing of images or boxes: it is given a model, an optimiser and schedule, a
``make_loader(start_iter)`` that yields batches from any iteration on, and a ``step_fn`` that
turns a batch into losses. The loop itself runs the step (mixed precision, gradient accumulation,
clipping, the non-finite loss policy) and makes the ranks agree on stopping and on non-finite
losses; everything periodic (logging, evaluation, the best checkpoint, early stopping, EMA,
checkpoints, signals, the end-of-run summary) is a hook of ``engine.hooks``. Training runs under
the run folder's lock (``run_lock``: one writer per folder), with one process or several.

Exact resumption: the checkpoint of iteration k holds the state the loop has right after
finishing iteration k (model, optimiser, schedule, grad scaler, every RNG and every hook's state), so resuming from
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
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from resnet_det.config.validate import check_accumulate_steps, check_trainer_settings
from resnet_det.engine.checkpoint import FINAL_CHECKPOINT, Checkpointer, capture_rng_state, restore_rng_state
from resnet_det.engine.distributed import DistInfo
from resnet_det.engine.events import EventWriter
from resnet_det.engine.hooks import EMA, HookBase, PeriodicCheckpointer, build_hooks
from resnet_det.engine.run_lock import hold_run_lock
from resnet_det.errors import CheckpointError, ConfigError, TrainingError
from resnet_det.utils.comm import all_gather_object, all_reduce_max
from resnet_det.utils.file_io import remove_temporary_files

__all__ = ["Trainer", "TrainingInterrupted", "PREEMPTED_EXIT_STATUS", "set_deterministic", "StepFn", "EvalFn"]

logger = logging.getLogger(__name__)

StepFn = Callable[[nn.Module, Any], Tuple[Mapping[str, torch.Tensor], Mapping[str, float]]]
EvalFn = Callable[[nn.Module, int], Optional[Mapping[str, float]]]

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


class Trainer:
    """Train ``model`` from ``resume_or_start()``'s iteration to ``max_iter``; see the module doc.

    ``step_fn(model, batch) -> (losses, extras)``: the loss tensors to sum and back-propagate,
    and extra scalars to log (e.g. accuracy); it moves the batch to the model's device (and to
    channels-last when wanted). ``eval_fn(model, iteration) -> metrics`` runs every
    ``eval_period`` iterations (0: only at the end) on every rank; rank 0's metrics are logged.
    Periods are counted in completed iterations: the checkpoint ``model_0000100.pth`` holds the
    state after 100 iterations.

    With ``accumulate_steps`` N, one iteration is N micro-batches whose gradients add up before
    the optimiser step (the loss of each is divided by N), so ``make_loader(k)`` must yield
    micro-batches from the ``k``-th on; under DDP the gradients are all-reduced on the last one only.

    Everything periodic is a hook (``resnet_det.engine.hooks``, where ``build_hooks`` orders them):
    ``hooks`` holds those of ``build_hooks``; ``register_hooks`` adds a user's before the
    checkpointer, so that their state is saved with the iteration.
    """

    @classmethod
    def from_config(
        cls, cfg, *, dist: DistInfo, max_iter: Optional[int] = None, kind: str, metric=None, **parts
    ) -> "Trainer":
        """A trainer with the settings of ``cfg.solver`` and ``cfg.train`` (shared by detection and
        classification) and the hooks they ask for (``hooks.hooks_from_config``); ``parts`` are the
        run's own: model, optimizer, scheduler, make_loader, step_fn, eval_fn, meta."""
        from omegaconf import OmegaConf

        from resnet_det.engine.hooks import hooks_from_config

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
            accumulate_steps=cfg.solver.accumulate_steps,
            images_per_iter=cfg.solver.batch_size * cfg.solver.accumulate_steps,
            config_text=OmegaConf.to_yaml(cfg, resolve=True),
            max_keep=cfg.train.max_checkpoints_kept,
            dist=dist,
            channels_last=cfg.train.channels_last and dist.device.type == "cuda",
            **hooks_from_config(cfg, kind, metric),
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
        accumulate_steps: int = 1,
        meta: Optional[Mapping[str, Any]] = None,
        config_text: str = "",
        max_keep: Optional[int] = 3,
        dist: Optional[DistInfo] = None,
        progress: bool = True,
        channels_last: bool = False,
        ema: Optional[HookBase] = None,
        best: Optional[HookBase] = None,
        early_stopping: Optional[HookBase] = None,
        user: Sequence[HookBase] = (),
        images_per_iter: Optional[int] = None,
    ):
        check_trainer_settings(max_iter, checkpoint_period, log_period, eval_period, nonfinite_loss)
        check_accumulate_steps(accumulate_steps)
        self.dist = dist if dist is not None else DistInfo(device=device or torch.device("cpu"))
        self.device = device if device is not None else self.dist.device
        self.max_iter = max_iter
        self.output_dir = Path(output_dir)
        self.clip_grad_norm = clip_grad_norm
        self.nonfinite_loss = nonfinite_loss
        self.accumulate_steps = accumulate_steps
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
        # What the step leaves for the hooks, and what the hooks leave for each other.
        self.step_scalars: Dict[str, float] = {}
        self.step_lr = 0.0
        self.step_time = self.step_data_time = 0.0
        self.stop_signal: Optional[int] = None  # set by StopOnSignal's handler
        self.stop_agreed = False  # every rank has seen a stop signal by this step
        self.stop_reason: Optional[str] = None  # a hook asked the loop to end (early stopping)
        self.eval_metrics: Optional[Dict[str, float]] = None  # this iteration's evaluation
        self.last_eval_metrics: Optional[Dict[str, float]] = None
        self.last_checkpoint: Optional[Path] = None
        self.results: Dict[str, float] = {}
        self.events: Optional[EventWriter] = None
        self._synced_at: Optional[int] = None
        self._hook_states: Dict[str, Any] = {}
        self.hooks: List[HookBase] = []
        self._register(
            build_hooks(
                log_period=log_period,
                checkpoint_period=checkpoint_period,
                eval_fn=eval_fn,
                eval_period=eval_period,
                ema=ema,
                best=best,
                early_stopping=early_stopping,
                user=user,
                images_per_iter=images_per_iter,
            )
        )

    # -- hooks ---------------------------------------------------------------------------------

    def _register(self, hooks: Sequence[HookBase], at: Optional[int] = None) -> None:
        names = [h.name for h in self.hooks] + [h.name for h in hooks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(
                f"hook {', '.join(duplicates)} is there twice: their checkpointed states would mix; "
                "give one a `name` property of its own"
            )
        for hook in hooks:
            hook.trainer = self
            if hook.name in self._hook_states:
                hook.load_state_dict(self._hook_states[hook.name])
        at = len(self.hooks) if at is None else at
        self.hooks[at:at] = list(hooks)

    def register_hooks(self, hooks: Sequence[HookBase]) -> None:
        """Add ``hooks`` after the user's hooks so far, before the checkpointer (see ``hooks``).

        Call it before ``resume_or_start`` or after: a resumed state reaches them either way."""
        self._register(hooks, at=next(i for i, h in enumerate(self.hooks) if isinstance(h, PeriodicCheckpointer)))

    @property
    def eval_module(self) -> nn.Module:
        """What evaluation and ``model_best.pth`` use: the EMA weights when asked, else the model."""
        for hook in self.hooks:
            if isinstance(hook, EMA) and hook.use_for_eval:
                return hook._ensure_module()
        return self.module

    def request_stop(self, reason: str) -> None:
        """End training after this iteration (a hook's decision, the same on every rank): the
        checkpointer writes its checkpoint and ``model_final.pth``; ``reason`` is logged."""
        self.stop_reason = reason

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
        self.stop_reason = state.get("stop_reason")
        self._hook_states = dict(state.get("hooks") or {})
        for hook in self.hooks:
            if hook.name in self._hook_states:
                try:
                    hook.load_state_dict(self._hook_states[hook.name])
                except (RuntimeError, KeyError, ValueError) as e:
                    raise CheckpointError(
                        f"checkpoint {source}: the state of hook {hook.name} does not fit ({_first_line(e)}); "
                        "resume with the config that wrote it"
                    ) from e

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
            "stop_reason": self.stop_reason,
            "hooks": {
                name: hook_state for name, hook_state in ((h.name, h.state_dict()) for h in self.hooks) if hook_state
            },
        }
        if self.dist.world_size > 1:
            # Each rank draws its own random numbers (e.g. RPN sampling on its own GPU stream).
            state["rng_per_rank"] = all_gather_object(rng)
        return state

    def sync_buffers(self) -> None:
        """Give every replica rank 0's buffers (BatchNorm's running statistics), once an iteration.

        DDP broadcasts them at the start of each forward, so training is unchanged; but after the
        last step each rank holds the statistics of its own batch, and sharded evaluation would
        otherwise run a slightly different model on each rank than the one rank 0 saves.
        """
        if self.dist.world_size > 1 and self._synced_at != self.iter:
            modules = [self.module] + ([self.eval_module] if self.eval_module is not self.module else [])
            for module in modules:
                for buffer in module.buffers():
                    torch_dist.broadcast(buffer, src=0)
        self._synced_at = self.iter

    def save_checkpoint(self, final: bool = False) -> Path:
        """The checkpoint of this iteration; with ``final``, ``model_final.pth`` too (the finished
        model for evaluation and fine-tuning, without optimiser state)."""
        state = self._state()
        path = self.checkpointer.save(self.iter, state)
        if final:
            self.checkpointer.save_final({**{k: state[k] for k in ("model", "config", "meta")}, "iteration": self.iter})
        self.last_checkpoint = path
        return path

    # -- the loop ------------------------------------------------------------------------------

    def train(self) -> Dict[str, float]:
        """Run to ``max_iter`` (or until a hook stops it); return the last logged scalars and the
        final evaluation metrics.

        Raises TrainingError for a non-finite loss (policy "stop") or a failed worker, and
        TrainingInterrupted after SIGINT/SIGTERM/SIGUSR1 once the current iteration is checkpointed.
        """
        if self.start_iter is None:
            raise RuntimeError("call resume_or_start() before train()")
        if self.start_iter >= self.max_iter or self.stop_reason:
            why = (
                f"it stopped at iteration {self.start_iter} ({self.stop_reason})"
                if self.stop_reason
                else (f"it is already trained to iteration {self.max_iter}")
            )
            logger.info("%s: %s; nothing to do", self.output_dir, why)
            return {"iteration": float(self.start_iter)}
        self.stop_signal, self.stop_agreed = None, False
        with contextlib.ExitStack() as stack:
            stack.enter_context(hold_run_lock(self.output_dir, self.dist.is_main))
            if self.dist.is_main:
                self.events = stack.enter_context(
                    EventWriter(
                        self.output_dir, max_iter=self.max_iter, start_iter=self.start_iter, progress=self.progress
                    )
                )
            try:
                return self._loop()
            except RuntimeError as e:
                if self.dist.world_size > 1 and _is_collective_failure(e):
                    raise TrainingError(
                        f"another worker stopped (rank {self.dist.rank} lost it at iteration {self.iter + 1}: "
                        f"{_first_line(e)}); stopping; see the other workers' output, then resume with --resume"
                    ) from e
                raise
            finally:
                self.events = None

    def _loop(self) -> Dict[str, float]:
        self.model.train()
        loader = iter(self.make_loader(self.start_iter * self.accumulate_steps))
        self.results = {}
        try:
            for hook in self.hooks:
                hook.before_train()
            while self.iter < self.max_iter:
                self.run_step(loader)
                self.iter += 1
                if self.events is not None:
                    self.events.advance(self.iter)
                for hook in self.hooks:
                    hook.after_step()
                if self.stop_reason:
                    logger.info("iteration %d: %s; final checkpoint written", self.iter, self.stop_reason)
                    if self.events is not None:
                        self.events.write_note(self.iter, {"stop_reason": self.stop_reason})
                    self.results.update(self.last_eval_metrics or {})
                    break
        finally:
            for hook in self.hooks:
                hook.after_train()
        return self.results

    def _next(self, loader: Iterator) -> Any:
        try:
            return next(loader)
        except StopIteration:
            raise RuntimeError(
                f"the loader of make_loader({self.start_iter * self.accumulate_steps}) ended at iteration "
                f"{self.iter}: it must yield batches until max_iter"
            ) from None

    def run_step(self, loader: Iterator) -> None:
        """One optimiser step over ``accumulate_steps`` micro-batches of ``loader``.

        Before each backward, one small collective makes every rank take the same branch on a
        non-finite loss and on a stop signal: skipping or stopping alone would leave the others
        waiting in the next all-reduce. A skipped step still reads its remaining micro-batches, so
        the data stream stays that of the iteration count.
        """
        start = time.perf_counter()
        self.step_data_time = 0.0
        self.step_lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        steps = self.accumulate_steps
        sums: Dict[str, float] = defaultdict(float)
        skipped = False
        for micro in range(steps):
            fetched = time.perf_counter()
            batch = self._next(loader)
            self.step_data_time += time.perf_counter() - fetched
            if skipped:
                continue
            last = micro == steps - 1
            sync = contextlib.nullcontext() if last or self.model is self.module else self.model.no_sync()
            with sync:
                with self._autocast():
                    losses, extras = self.step_fn(self.model, batch)
                total = sum(losses.values())
                flags = torch.tensor(
                    [not bool(torch.isfinite(total)), self.stop_signal is not None], dtype=torch.float32
                )
                nonfinite, stop = (bool(f) for f in all_reduce_max(flags).tolist())
                self.stop_agreed = self.stop_agreed or stop
                if nonfinite:
                    self._nonfinite(losses, here=not bool(torch.isfinite(total)))
                    skipped = True
                    continue
                # Read before backward: the values are ready (isfinite synchronised), so this does
                # not wait for the backward kernels.
                sums["total_loss"] += float(total.detach())
                for k, v in losses.items():
                    sums[k] += float(v.detach())
                for k, v in extras.items():
                    sums[k] += float(v)
                scaled = total / steps if steps > 1 else total
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
        self.step_scalars = {}
        if not skipped:
            self.step_scalars = {k: v / steps for k, v in sums.items()}
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            if self.clip_grad_norm is not None:
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                self.step_scalars["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm))
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step_time = time.perf_counter() - start

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

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
