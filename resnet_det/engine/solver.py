"""The optimiser and learning-rate schedule of the paper: SGD with momentum, warm-up, decay.

Schedules are counted in iterations (one optimiser step each), as in the paper's CIFAR and
detection recipes; epoch-based recipes convert epochs to iterations before calling in here.

Two of the paper's rules depend on how training goes, not on the iteration count; both are part of
:class:`WarmupDecayLR` and of its ``state_dict``, so a resumed run takes the same decisions:

- warm-up until the training error is low (ResNet-110 on CIFAR-10: lr 0.01 "until the training
  error is below 80%", then 0.1): ``observe_train_error`` after each iteration's forward pass;
- divide the lr by 10 "when the error plateaus" (ImageNet): ``observe_val_error`` after each
  evaluation. In iteration-based training an evaluation runs every ``train.eval_period``
  iterations; after ``plateau_patience`` evaluations in a row that do not beat the best error so
  far by ``plateau_threshold`` points, the lr is divided by ``gamma`` from the next iteration on
  (and the count starts again), as torch's ``ReduceLROnPlateau`` does per epoch.
"""

import logging
from collections import deque
from typing import Optional, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from resnet_det.config.validate import check_batch_and_lr, check_schedule
from resnet_det.errors import ConfigError

__all__ = ["scaled_lr", "build_optimizer", "build_lr_scheduler", "lr_factor", "WarmupDecayLR"]

logger = logging.getLogger(__name__)

# The warm-up-until-error rule compares the mean training error of this many iterations: one
# batch of 128 CIFAR images would end it on a lucky draw.
TRAIN_ERROR_WINDOW = 20


def scaled_lr(solver_cfg) -> float:
    """The learning rate for this run's batch size, by the linear scaling rule.

    Goyal et al. 2017 ("Accurate, Large Minibatch SGD"): when the mini-batch is multiplied by k,
    multiply the learning rate by k. ``solver.base_lr`` is given for
    ``solver.reference_batch_size`` images (the recipe's batch, e.g. the paper's 8 for COCO,
    128 for CIFAR-10), so a run with an effective batch of ``solver.batch_size`` images times
    ``solver.accumulate_steps`` micro-batches per step uses
    ``base_lr * batch_size * accumulate_steps / reference_batch_size``.
    """
    check_batch_and_lr(solver_cfg)
    effective = solver_cfg.batch_size * solver_cfg.accumulate_steps
    return solver_cfg.base_lr * effective / solver_cfg.reference_batch_size


def build_optimizer(model: nn.Module, solver_cfg) -> torch.optim.SGD:
    """SGD with momentum over the trainable parameters, at :func:`scaled_lr`.

    As in the paper, one weight decay applies to every trainable parameter (BN scales and biases
    included); frozen ones (``requires_grad=False``: frozen BN, ``freeze_at`` stages) are left out
    so they take no momentum buffers.
    """
    params = [param for param in model.parameters() if param.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters: lower model.backbone.freeze_at")
    return torch.optim.SGD(
        params,
        lr=scaled_lr(solver_cfg),
        momentum=solver_cfg.momentum,
        weight_decay=solver_cfg.weight_decay,
    )


def lr_factor(
    iteration: int,
    *,
    steps: Sequence[int],
    gamma: float,
    warmup_iters: int,
    warmup_factor: float,
    warmup_method: str = "linear",
) -> float:
    """The multiplier of the base learning rate for the ``iteration``-th step (0-based).

    ``gamma ** (number of steps <= iteration)``, times during the first ``warmup_iters`` steps
    either ``warmup_factor`` ("constant": the paper's ResNet-110 warm-up, 0.01 then back to 0.1)
    or a ramp from ``warmup_factor`` up to 1 ("linear", Goyal et al.).
    """
    decay = gamma ** sum(1 for s in steps if s <= iteration)
    if iteration >= warmup_iters:
        return decay
    if warmup_method == "constant":
        return decay * warmup_factor
    alpha = iteration / warmup_iters
    return decay * (warmup_factor * (1 - alpha) + alpha)


class WarmupDecayLR(LRScheduler):
    """Warm-up then decay, stepped once per iteration; the rules of the module doc.

    ``warmup_until_error`` (percent) replaces the fixed ``warmup_iters``: the lr is
    ``warmup_factor`` times the base until the mean of the last ``TRAIN_ERROR_WINDOW`` observed
    training errors is below it. ``policy`` "steps" divides by ``gamma`` at each of ``steps``,
    "plateau" on a plateau of the observed validation errors.
    """

    # What describes the schedule rather than its progress: left out of the checkpoint, so that a
    # resumed run follows the config it is given (as LambdaLR leaves out its function).
    _SETTINGS = (
        "steps",
        "gamma",
        "warmup_iters",
        "warmup_factor",
        "warmup_method",
        "warmup_until_error",
        "policy",
        "patience",
        "threshold",
    )

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        steps: Sequence[int] = (),
        gamma: float = 0.1,
        warmup_iters: int = 0,
        warmup_factor: float = 1.0,
        warmup_method: str = "linear",
        warmup_until_error: Optional[float] = None,
        policy: str = "steps",
        patience: int = 5,
        threshold: float = 0.0,
    ):
        self.steps, self.gamma = list(steps), gamma
        self.warmup_iters, self.warmup_factor, self.warmup_method = warmup_iters, warmup_factor, warmup_method
        self.warmup_until_error = warmup_until_error
        self.policy, self.patience, self.threshold = policy, patience, threshold
        # Progress (checkpointed): when the error rule ended the warm-up, the recent training
        # errors, and the plateau rule's best error, evaluations without improvement and drops.
        self.warmup_ended_at: Optional[int] = None
        self.recent_train_errors: list = []
        self.best_val_error: Optional[float] = None
        self.evals_without_improvement = 0
        self.plateau_drops = 0
        super().__init__(optimizer)

    def factor(self, iteration: int) -> float:
        """The multiplier of the base lr for the ``iteration``-th step (0-based)."""
        if self.policy == "plateau":
            decay = self.gamma**self.plateau_drops
        else:
            decay = self.gamma ** sum(1 for s in self.steps if s <= iteration)
        if self.warmup_until_error is not None:
            warming = self.warmup_ended_at is None or iteration < self.warmup_ended_at
            return decay * (self.warmup_factor if warming else 1.0)
        return (
            lr_factor(
                iteration,
                steps=(),
                gamma=1.0,
                warmup_iters=self.warmup_iters,
                warmup_factor=self.warmup_factor,
                warmup_method=self.warmup_method,
            )
            * decay
        )

    def get_lr(self):
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]

    @property
    def warming_up_by_error(self) -> bool:
        """Whether training errors are still wanted (callers can skip computing them otherwise)."""
        return self.warmup_until_error is not None and self.warmup_ended_at is None

    def observe_train_error(self, top1_err: float) -> None:
        """The training top-1 error (percent) of the iteration being run, before ``step()``; the
        same value on every rank (reduce it first), so that all ranks end the warm-up together."""
        if not self.warming_up_by_error:
            return
        window = deque(self.recent_train_errors, maxlen=TRAIN_ERROR_WINDOW)
        window.append(float(top1_err))
        self.recent_train_errors = list(window)
        if len(window) == TRAIN_ERROR_WINDOW and sum(window) / len(window) < self.warmup_until_error:
            self.warmup_ended_at = self.last_epoch + 1  # the next iteration trains at the full lr
            logger.info(
                "iteration %d: training error %.1f%% < %.1f%%: warm-up over, lr back to the base",
                self.warmup_ended_at,
                sum(window) / len(window),
                self.warmup_until_error,
            )

    def observe_val_error(self, top1_err: float) -> None:
        """A validation top-1 error (percent), after the iteration it was measured at; the plateau
        rule's decision applies from the next ``step()`` on."""
        if self.policy != "plateau":
            return
        if self.best_val_error is None or top1_err < self.best_val_error - self.threshold:
            self.best_val_error = float(top1_err)
            self.evals_without_improvement = 0
            return
        self.evals_without_improvement += 1
        if self.evals_without_improvement >= self.patience:
            self.plateau_drops += 1
            self.evals_without_improvement = 0
            logger.info(
                "validation error %.2f%% has not improved on %.2f%% for %d evaluations: lr divided by %g",
                top1_err,
                self.best_val_error,
                self.patience,
                1 / self.gamma,
            )

    def state_dict(self):
        return {k: v for k, v in super().state_dict().items() if k not in self._SETTINGS}


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    solver_cfg,
    max_iter: Optional[int] = None,
    steps: Optional[Sequence[int]] = None,
) -> WarmupDecayLR:
    """Warm-up then decay as ``solver_cfg`` says, stepped once per iteration.

    ``max_iter`` and ``steps`` replace ``solver.max_iter`` and ``solver.steps`` when a recipe
    derives them (e.g. from epochs); steps at or beyond ``max_iter`` are never reached and are
    reported. ``lr_policy``, ``plateau_*`` and ``warmup_until_error`` exist in the classification
    schema only; the detection one has fixed steps and warm-up. The rules are those that
    ``load_config`` checked (``config.validate.check_schedule``), checked again on derived steps.
    """
    max_iter = solver_cfg.max_iter if max_iter is None else max_iter
    steps = list(solver_cfg.steps if steps is None else steps)
    check_schedule(solver_cfg, steps)
    policy = getattr(solver_cfg, "lr_policy", "steps")
    unreached = [step for step in steps if step >= max_iter]
    if unreached:
        logger.warning("solver.steps %s are not before max_iter=%d: the lr never drops there", unreached, max_iter)
    return WarmupDecayLR(
        optimizer,
        steps=steps,
        gamma=solver_cfg.gamma,
        warmup_iters=solver_cfg.warmup_iters,
        warmup_factor=solver_cfg.warmup_factor,
        warmup_method=solver_cfg.warmup_method,
        warmup_until_error=getattr(solver_cfg, "warmup_until_error", None),
        policy=policy,
        patience=getattr(solver_cfg, "plateau_patience", 1),
        threshold=getattr(solver_cfg, "plateau_threshold", 0.0),
    )
