"""The optimiser and learning-rate schedule of the paper: SGD with momentum, warm-up, step decay.

Schedules are counted in iterations (one optimiser step each), as in the paper's CIFAR and
detection recipes; epoch-based recipes convert epochs to iterations before calling in here.
"""

import logging
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from resnet_det.errors import ConfigError

__all__ = ["scaled_lr", "build_optimizer", "build_lr_scheduler", "lr_factor"]

logger = logging.getLogger(__name__)

WARMUP_METHODS = ("linear", "constant")


def scaled_lr(solver_cfg) -> float:
    """The learning rate for this run's batch size, by the linear scaling rule.

    Goyal et al. 2017 ("Accurate, Large Minibatch SGD"): when the mini-batch is multiplied by k,
    multiply the learning rate by k. ``solver.base_lr`` is given for
    ``solver.reference_batch_size`` images (the recipe's batch, e.g. the paper's 8 for COCO,
    128 for CIFAR-10), so a run with ``solver.batch_size`` images uses
    ``base_lr * batch_size / reference_batch_size``.
    """
    for key in ("batch_size", "reference_batch_size"):
        if getattr(solver_cfg, key) < 1:
            raise ConfigError(f"solver.{key}={getattr(solver_cfg, key)}: must be a positive number of images")
    if not solver_cfg.base_lr > 0:
        raise ConfigError(f"solver.base_lr={solver_cfg.base_lr}: must be positive")
    return solver_cfg.base_lr * solver_cfg.batch_size / solver_cfg.reference_batch_size


def build_optimizer(model: nn.Module, solver_cfg) -> torch.optim.SGD:
    """SGD with momentum over the trainable parameters, at :func:`scaled_lr`.

    As in the paper, one weight decay applies to every trainable parameter (BN scales and biases
    included); frozen ones (``requires_grad=False``: frozen BN, ``freeze_at`` stages) are left out
    so they take no momentum buffers.
    """
    params = [p for p in model.parameters() if p.requires_grad]
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


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    solver_cfg,
    max_iter: Optional[int] = None,
    steps: Optional[Sequence[int]] = None,
) -> LambdaLR:
    """Warm-up then step decay (``solver.steps``, ``solver.gamma``), stepped once per iteration.

    ``max_iter`` and ``steps`` replace ``solver.max_iter`` and ``solver.steps`` when a recipe
    derives them (e.g. from epochs); steps at or beyond ``max_iter`` are never reached and are
    reported.
    """
    max_iter = solver_cfg.max_iter if max_iter is None else max_iter
    steps = list(solver_cfg.steps if steps is None else steps)
    method = solver_cfg.warmup_method
    if method not in WARMUP_METHODS:
        raise ConfigError(f"solver.warmup_method={method!r}: use one of {', '.join(WARMUP_METHODS)}")
    if steps != sorted(steps) or any(s < 0 for s in steps):
        raise ConfigError(f"solver.steps={steps}: list the iterations in increasing order")
    if solver_cfg.warmup_iters < 0 or not 0 < solver_cfg.warmup_factor <= 1:
        raise ConfigError(
            f"solver.warmup_iters={solver_cfg.warmup_iters}, solver.warmup_factor={solver_cfg.warmup_factor}: "
            "use warmup_iters >= 0 and 0 < warmup_factor <= 1"
        )
    unreached = [s for s in steps if s >= max_iter]
    if unreached:
        logger.warning("solver.steps %s are not before max_iter=%d: the lr never drops there", unreached, max_iter)
    factor = _make_factor(steps, solver_cfg.gamma, solver_cfg.warmup_iters, solver_cfg.warmup_factor, method)
    return LambdaLR(optimizer, factor)


def _make_factor(steps, gamma, warmup_iters, warmup_factor, method) -> Callable[[int], float]:
    # A plain function, not a callable object: LambdaLR.state_dict() then holds only counters and
    # base learning rates, so checkpoints pickle no schedule code.
    def factor(iteration: int) -> float:
        return lr_factor(
            iteration,
            steps=steps,
            gamma=gamma,
            warmup_iters=warmup_iters,
            warmup_factor=warmup_factor,
            warmup_method=method,
        )

    return factor
