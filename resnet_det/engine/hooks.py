"""The periodic concerns of training, one hook each, and the one place that orders them.

A hook is called by ``Trainer`` around the loop: ``before_train``, ``after_step`` (after each
optimiser step, ``trainer.iter`` already counts it) and ``after_train`` (also when training stops
on an error or a signal). What a hook must carry over a resume goes in ``state_dict()``; the
trainer saves every hook's state in each periodic checkpoint (under ``"hooks"``, by ``name``) and
gives it back with ``load_state_dict()`` when it resumes, so a resumed run takes the decisions an
uninterrupted one would (the EMA weights, the best value so far, the patience count).

The order, built by :func:`build_hooks`, is the contract:

1. ``EMA``: the averaged weights follow the optimiser step first, so the evaluation sees them;
2. ``MetricsWriter``: the averaged scalars of each ``log_period`` window;
3. ``Evaluation``: ``eval_fn`` every ``eval_period`` iterations and at the end, on the EMA weights
   when ``EMA(use_for_eval=True)``; its metrics are rank 0's, given to every rank;
4. ``BestCheckpoint``: ``model_best.pth`` when the evaluation beat the best value so far;
5. ``EarlyStopping``: asks the loop to stop after ``patience`` evaluations without improvement;
6. the user's hooks (``train.hooks`` or ``Trainer.register_hooks``), in the order given;
7. ``PeriodicCheckpointer``: the checkpoint of the iteration, so it holds what the hooks above did;
   ``model_final.pth`` at ``max_iter`` or on an early stop;
8. ``StopOnSignal``: SIGINT/SIGTERM/SIGUSR1 end training once that checkpoint is written;
9. ``RunSummary``: the end-of-run line and ``summary.json``.
"""

import copy
import importlib
import json
import logging
import os
import resource
import signal
import sys
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from backbones import Registry
from resnet_det.config.validate import check_early_stopping, check_ema_decay
from resnet_det.engine.checkpoint import capture_rng_state, restore_rng_state
from resnet_det.errors import ConfigError
from resnet_det.utils.comm import all_gather_object, reduce_dict
from resnet_det.utils.file_io import atomic_torch_save, atomic_write_text

if TYPE_CHECKING:
    from resnet_det.engine.trainer import Trainer

__all__ = [
    "HookBase",
    "HOOKS",
    "EMA",
    "MetricsWriter",
    "Evaluation",
    "BestCheckpoint",
    "EarlyStopping",
    "PeriodicCheckpointer",
    "StopOnSignal",
    "RunSummary",
    "build_hooks",
    "hooks_from_config",
    "default_best_metric",
    "BEST_CHECKPOINT",
    "SUMMARY_FILE",
]

logger = logging.getLogger(__name__)

BEST_CHECKPOINT = "model_best.pth"
SUMMARY_FILE = "summary.json"


class HookBase:
    """Does nothing; a hook overrides what it needs. ``self.trainer`` is set when registered."""

    trainer: "Trainer"

    @property
    def name(self) -> str:
        """The key of this hook's state in checkpoints."""
        return type(self).__name__

    def before_train(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


# Hooks that train.hooks can name without a dotted path: register yours with
# ``@HOOKS.register("name")`` (a class built with ``from_config(cfg)`` if it has one, else ``cls()``).
HOOKS: Registry = Registry("hook", error=ConfigError, hint="or give a dotted path: my_package.module.MyHook")


# -- 1. EMA ----------------------------------------------------------------------------------------


class EMA(HookBase):
    """An exponential moving average of the weights: ``ema = decay * ema + (1 - decay) * weights``
    after every optimiser step, over every floating-point tensor of the state dict (BatchNorm's
    running statistics too); integer buffers are copied."""

    def __init__(self, decay: float, use_for_eval: bool = True):
        check_ema_decay(decay)
        self.decay = decay
        self.use_for_eval = use_for_eval
        self.module: Optional[nn.Module] = None

    def before_train(self) -> None:
        self._ensure_module()

    def _ensure_module(self) -> nn.Module:
        if self.module is None:
            self.module = copy.deepcopy(self.trainer.module).eval()
            for p in self.module.parameters():
                p.requires_grad_(False)
        return self.module

    @torch.no_grad()
    def after_step(self) -> None:
        ema = self._ensure_module().state_dict()
        current = self.trainer.module.state_dict()
        floats = [k for k, v in ema.items() if v.is_floating_point()]
        torch._foreach_lerp_([ema[k] for k in floats], [current[k].detach() for k in floats], 1.0 - self.decay)
        for key, value in ema.items():
            if not value.is_floating_point():
                value.copy_(current[key])

    def state_dict(self) -> Dict[str, Any]:
        return {"weights": self._ensure_module().state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._ensure_module().load_state_dict(state["weights"])


# -- 2. Metrics ------------------------------------------------------------------------------------


class MetricsWriter(HookBase):
    """Averages the step's scalars over each ``log_period`` window and writes them (rank 0)."""

    def __init__(self, log_period: int):
        self.log_period = log_period
        self._reset()

    def _reset(self) -> None:
        self.sums: Dict[str, float] = defaultdict(float)
        self.counts: Dict[str, int] = defaultdict(int)
        self.iters = 0
        self.time = 0.0
        self.data_time = 0.0

    def after_step(self) -> None:
        t = self.trainer
        for key, value in t.step_scalars.items():
            self.sums[key] += value
            self.counts[key] += 1
        self.iters += 1
        self.time += t.step_time
        self.data_time += t.step_data_time
        if t.iter % self.log_period == 0 or t.iter == t.max_iter:
            self._report()
            self._reset()

    def _report(self) -> None:
        t = self.trainer
        scalars = {k: self.sums[k] / self.counts[k] for k in self.sums}
        if t.dist.world_size > 1:
            scalars = reduce_dict(scalars)
        seconds_per_iter = self.time / self.iters
        scalars.update(
            lr=t.step_lr,
            time=seconds_per_iter,
            data_time=self.data_time / self.iters,
            eta_seconds=seconds_per_iter * (t.max_iter - t.iter),
        )
        if t.skipped_steps:
            scalars["skipped_steps"] = t.skipped_steps
        if t.device.type == "cuda":
            scalars["max_mem_mb"] = torch.cuda.max_memory_allocated(t.device) / 2**20
        if t.events is not None:
            t.events.write(t.iter, scalars)
        t.results = {"iteration": float(t.iter), **scalars}


# -- 3. Evaluation ---------------------------------------------------------------------------------


class Evaluation(HookBase):
    """``eval_fn(module, iteration)`` every ``eval_period`` iterations (0: only at the end) and at
    the end, on every rank; ``trainer.eval_metrics`` is then rank 0's metrics on every rank.

    Its random draws are undone, so the weights at ``max_iter`` do not depend on ``eval_period``
    (unless the schedule reads the metrics, by design) and a resumed run need not repeat it.
    """

    def __init__(self, eval_fn, eval_period: int):
        self.eval_fn = eval_fn
        self.eval_period = eval_period

    def after_step(self) -> None:
        t = self.trainer
        t.eval_metrics = None
        if not ((self.eval_period and t.iter % self.eval_period == 0) or t.iter == t.max_iter):
            return
        t.sync_buffers()
        module = t.eval_module
        rng = capture_rng_state()
        module.eval()
        try:
            metrics = {k: float(v) for k, v in dict(self.eval_fn(module, t.iter) or {}).items()}
        finally:
            t.module.train()
            restore_rng_state(rng)
        if t.dist.world_size > 1:
            metrics = all_gather_object(metrics)[0]  # detection scores on rank 0 only
        if t.events is not None and metrics:
            t.events.write(t.iter, metrics)
        t.eval_metrics = metrics
        t.last_eval_metrics = metrics
        if t.iter == t.max_iter:
            t.results.update(metrics)


# -- 4. and 5. Best checkpoint and early stopping ---------------------------------------------------


def default_best_metric(kind: str, test_sets: Sequence[str] = (), metric: Optional[str] = None) -> str:
    """The metric ``model_best.pth`` and early stopping follow by default: classification's
    ``val/top1_err``; detection's COCO ``AP`` or VOC ``mAP`` of the first test set (``test.metric``
    when set, else the first of the two that the evaluation reports)."""
    if kind == "classification":
        return "val/top1_err"
    first = test_sets[0] if test_sets else "test"
    if metric is None:
        return f"{first}/AP|{first}/mAP"
    return f"{first}/{'AP' if metric == 'coco' else 'mAP'}"


def _default_mode(metric: str) -> str:
    last = metric.split("|")[0].rsplit("/", 1)[-1]
    return "min" if "err" in last or "loss" in last else "max"


class _Tracked:
    """The best value of one metric and where it was, compared in ``mode`` ("max" or "min"); a
    metric "a|b" is the first of them that the evaluation reports."""

    def __init__(self, metric: str, mode: Optional[str], min_delta: float = 0.0):
        self.metric = metric
        self.mode = mode or _default_mode(metric)
        if self.mode not in ("max", "min"):
            raise ConfigError(f"train.best.mode={self.mode!r}: use max or min (null: by the metric's name)")
        self.min_delta = min_delta
        self.best: Optional[float] = None
        self.best_iter: Optional[int] = None

    def value(self, metrics: Mapping[str, float]) -> Optional[tuple]:
        for key in self.metric.split("|"):
            if key in metrics:
                return key, metrics[key]
        return None

    def read(self, metrics: Optional[Mapping[str, float]]) -> Optional[tuple]:
        """``(key, value)`` from this step's evaluation; None when none ran. A metric that the
        evaluation does not report is a config error, not a silently untracked run."""
        if not metrics:
            return None
        found = self.value(metrics)
        if found is None:
            raise ConfigError(
                f"train.best.metric={self.metric}: not among the evaluation's metrics ({', '.join(sorted(metrics))}); "
                "name one of them"
            )
        return found

    def improves(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta

    def update(self, metrics: Optional[Mapping[str, float]], iteration: int) -> Optional[tuple]:
        """``(key, value, improved)`` of this step's evaluation (None when none ran); an improvement
        becomes the best, at ``iteration``, and ``key`` the metric (the one of "a|b" reported)."""
        found = self.read(metrics)
        if found is None:
            return None
        key, value = found
        improved = self.improves(value)
        if improved:
            self.metric, self.best, self.best_iter = key, value, iteration
        return key, value, improved

    def state_dict(self) -> Dict[str, Any]:
        return {"best": self.best, "best_iter": self.best_iter}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_iter = state["best"], state["best_iter"]


class BestCheckpoint(HookBase):
    """``model_best.pth``: the weights evaluated (the EMA's when they are) at the evaluation with the
    best ``metric`` so far; its ``best`` entry says the metric, mode, value and iteration."""

    def __init__(self, metric: str, mode: Optional[str] = None):
        self.tracked = _Tracked(metric, mode)

    def after_step(self) -> None:
        t = self.trainer
        update = self.tracked.update(t.eval_metrics, t.iter)
        if update is None or not update[2]:
            return
        key, value, _ = update
        if t.dist.is_main:
            state = {
                "model": t.eval_module.state_dict(),
                "config": t.config_text,
                "meta": t.meta,
                "iteration": t.iter,
                "best": self.info(ema=t.eval_module is not t.module),
            }
            atomic_torch_save(state, t.output_dir / BEST_CHECKPOINT)
            logger.info("iteration %d: best %s so far, %.4g: saved %s", t.iter, key, value, BEST_CHECKPOINT)

    def info(self, ema: bool = False) -> Dict[str, Any]:
        return {
            "metric": self.tracked.metric,
            "mode": self.tracked.mode,
            "value": self.tracked.best,
            "iteration": self.tracked.best_iter,
            "ema": ema,
        }

    def state_dict(self) -> Dict[str, Any]:
        return {"metric": self.tracked.metric, **self.tracked.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tracked.load_state_dict(state)
        self.tracked.metric = state["metric"]


class EarlyStopping(HookBase):
    """Stop after ``patience`` evaluations in a row that do not improve ``metric`` by more than
    ``min_delta``; the loop then writes the final checkpoint of that iteration."""

    def __init__(self, metric: str, patience: int, mode: Optional[str] = None, min_delta: float = 0.0):
        check_early_stopping(patience, min_delta)
        if patience < 1:
            raise ConfigError(f"train.early_stopping.patience={patience}: give at least 1 evaluation (0: off)")
        self.tracked = _Tracked(metric, mode, min_delta)
        self.patience = patience
        self.bad_evals = 0

    def after_step(self) -> None:
        t = self.trainer
        update = self.tracked.update(t.eval_metrics, t.iter)
        if update is None:
            return
        key, _, improved = update
        if improved:
            self.bad_evals = 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience and t.iter < t.max_iter:
            t.request_stop(
                f"early stopping: {key} has not improved on {self.tracked.best:.4g} (iteration "
                f"{self.tracked.best_iter}) for {self.patience} evaluations"
            )

    def state_dict(self) -> Dict[str, Any]:
        return {**self.tracked.state_dict(), "bad_evals": self.bad_evals}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tracked.load_state_dict(state)
        self.bad_evals = state["bad_evals"]


# -- 7. and 8. Checkpoints and signals --------------------------------------------------------------


class PeriodicCheckpointer(HookBase):
    """The checkpoint of every ``checkpoint_period``-th iteration, of the last one, and of an
    iteration the loop stops after (a signal, early stopping)."""

    def __init__(self, checkpoint_period: int):
        self.checkpoint_period = checkpoint_period

    def after_step(self) -> None:
        t = self.trainer
        if t.iter % self.checkpoint_period == 0 or t.iter == t.max_iter or t.stop_agreed or t.stop_reason:
            t.sync_buffers()
            t.save_checkpoint(final=t.iter == t.max_iter or t.stop_reason is not None)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopOnSignal(HookBase):
    """SIGINT, SIGTERM or SIGUSR1: finish the iteration, let every rank agree (in the step), save,
    then raise ``TrainingInterrupted``; a second Ctrl-C stops at once."""

    def __init__(self):
        self._previous: Dict[int, Any] = {}
        self._pid = os.getpid()

    def _on_signal(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked data-loader worker: the training process decides when to stop
        t = self.trainer
        if t.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        t.stop_signal = signum
        logger.warning(
            "%s received: finishing iteration %d, then saving a checkpoint (Ctrl-C again stops at once)",
            signal.Signals(signum).name,
            t.iter + 1,
        )

    def before_train(self) -> None:
        self._pid = os.getpid()
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous = {s: signal.getsignal(s) for s in _STOP_SIGNALS}
        for s in _STOP_SIGNALS:
            signal.signal(s, self._on_signal)

    def after_step(self) -> None:
        from resnet_det.engine.trainer import TrainingInterrupted

        t = self.trainer
        if t.stop_agreed and t.iter < t.max_iter and t.stop_reason is None:
            raise TrainingInterrupted(t.iter, t.last_checkpoint, t.stop_signal or signal.SIGTERM)

    def after_train(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


# -- 9. The summary ---------------------------------------------------------------------------------


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class RunSummary(HookBase):
    """One line at the end of every run (finished, stopped early, interrupted or failed), also written as
    ``summary.json``: best metric and iteration, final metric, training time, images/s, peak memory.

    Time and images add up over the resumed parts of a run (they are in this hook's state).
    """

    def __init__(self, images_per_iter: Optional[int] = None):
        self.images_per_iter = images_per_iter
        self.seconds = 0.0
        self.iters = 0
        self._start: Optional[float] = None
        self._start_iter = 0

    def before_train(self) -> None:
        self._start, self._start_iter = time.perf_counter(), self.trainer.iter

    def _totals(self):
        t = self.trainer
        elapsed = time.perf_counter() - self._start if self._start is not None else 0.0
        return self.seconds + elapsed, self.iters + t.iter - self._start_iter

    def after_train(self) -> None:
        t = self.trainer
        if self._start is None or t.iter == self._start_iter:
            return
        seconds, iters = self._totals()
        best = next((h for h in t.hooks if isinstance(h, BestCheckpoint)), None)
        metrics = t.last_eval_metrics or {}
        metric = best.tracked.metric if best is not None else None
        final_value = None
        if metric is not None:
            found = best.tracked.value(metrics)
            final_value = found[1] if found else None
        if t.stop_reason:
            status = "stopped early"
        elif t.iter >= t.max_iter:
            status = "finished"
        else:  # a stop signal, or an error (then the log says which)
            status = "interrupted" if t.stop_agreed else "failed"
        summary = {
            "status": status,
            "iteration": t.iter,
            "max_iter": t.max_iter,
            "stop_reason": t.stop_reason,
            "best_metric": metric,
            "best_value": best.tracked.best if best is not None else None,
            "best_iteration": best.tracked.best_iter if best is not None else None,
            "final_value": final_value,
            "final_metrics": metrics,
            "train_seconds": round(seconds, 3),
            "images_per_second": round(iters * self.images_per_iter / seconds, 3)
            if self.images_per_iter and seconds > 0
            else None,
            "peak_memory_mb": round(_peak_memory_mb(t.device), 1),
            "ema": t.eval_module is not t.module,
        }
        self._start = None
        if not t.dist.is_main:
            return
        atomic_write_text(t.output_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        logger.info("summary: %s", summary_line(summary))

    def state_dict(self) -> Dict[str, Any]:
        seconds, iters = self._totals()
        return {"seconds": seconds, "iters": iters}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seconds, self.iters = float(state["seconds"]), int(state["iters"])


def summary_line(summary: Mapping[str, Any]) -> str:
    """``summary.json`` as the one line the log ends with."""

    def fmt(value):
        return "n/a" if value is None else f"{value:.4g}"

    parts = [f"{summary['status']} at iteration {summary['iteration']}/{summary['max_iter']}"]
    if summary["best_metric"]:
        parts.append(
            f"best {summary['best_metric']} {fmt(summary['best_value'])} at iteration {summary['best_iteration']}"
        )
        parts.append(f"final {fmt(summary['final_value'])}")
    parts.append(f"{summary['train_seconds']:.1f} s")
    if summary["images_per_second"] is not None:
        parts.append(f"{summary['images_per_second']:.3g} images/s")
    parts.append(f"peak memory {summary['peak_memory_mb']:.0f} MB")
    return ", ".join(parts)


# -- The order --------------------------------------------------------------------------------------


def build_hooks(
    *,
    log_period: int,
    checkpoint_period: int,
    eval_fn=None,
    eval_period: int = 0,
    ema: Optional[EMA] = None,
    best: Optional[BestCheckpoint] = None,
    early_stopping: Optional[EarlyStopping] = None,
    user: Sequence[HookBase] = (),
    images_per_iter: Optional[int] = None,
) -> List[HookBase]:
    """The hooks of a run in the order of the module doc; optional ones are left out when None."""
    hooks: List[Optional[HookBase]] = [
        ema,
        MetricsWriter(log_period),
        Evaluation(eval_fn, eval_period) if eval_fn is not None else None,
        best,
        early_stopping,
        *user,
        PeriodicCheckpointer(checkpoint_period),
        StopOnSignal(),
        RunSummary(images_per_iter),
    ]
    return [h for h in hooks if h is not None]


def _import_hook(spec: str, index: int):
    if spec in HOOKS:
        return HOOKS.get(spec)
    module_name, _, attr = spec.rpartition(".")
    if not module_name:
        raise HOOKS.unknown(spec)
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(
            f"train.hooks[{index}]={spec}: cannot import it ({e}); give module.ClassName on the Python path, "
            "or a name registered in resnet_det.engine.hooks.HOOKS"
        ) from None


def user_hooks_from_config(cfg) -> List[HookBase]:
    """The hooks ``train.hooks`` names: registered names or dotted paths to ``HookBase`` subclasses,
    each built with ``from_config(cfg)`` if it has one, else with no arguments."""
    built = []
    for index, spec in enumerate(cfg.train.hooks):
        cls = _import_hook(str(spec), index)
        if not (isinstance(cls, type) and issubclass(cls, HookBase)):
            raise ConfigError(f"train.hooks[{index}]={spec} is not a subclass of resnet_det.engine.hooks.HookBase")
        built.append(cls.from_config(cfg) if hasattr(cls, "from_config") else cls())
    return built


def hooks_from_config(cfg, kind: str, metric: Optional[str] = None) -> Dict[str, Any]:
    """``build_hooks`` arguments from ``cfg.train`` (``ema``, ``best``, ``early_stopping``, ``hooks``);
    ``kind`` and ``metric`` ("coco", "voc07" ...) choose the default best metric."""
    train = cfg.train
    test_sets = list(cfg.datasets.test) if kind == "detection" else []
    best_metric = train.best.metric or default_best_metric(kind, test_sets, metric)
    mode = train.best.mode
    evaluates = kind == "classification" or bool(test_sets)
    decay, use_for_eval = train.ema.decay, train.ema.use_for_eval
    ema = EMA(decay, use_for_eval=use_for_eval) if train.ema.enabled else None
    patience = train.early_stopping.patience
    min_delta = train.early_stopping.min_delta
    if patience and not evaluates:
        raise ConfigError("train.early_stopping.patience needs evaluations: set datasets.test (and train.eval_period)")
    if patience and train.eval_period < 1:
        raise ConfigError(
            "train.early_stopping.patience counts evaluations: set train.eval_period (e.g. 1000 iterations)"
        )
    return {
        "ema": ema,
        "best": BestCheckpoint(best_metric, mode) if train.best.enabled and evaluates else None,
        "early_stopping": EarlyStopping(best_metric, patience, mode, min_delta) if patience else None,
        "user": user_hooks_from_config(cfg),
    }
