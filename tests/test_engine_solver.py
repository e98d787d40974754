"""SGD settings, the linear scaling rule, and the warm-up + multi-step schedule."""

import logging

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from resnet_det.config.defaults import ClsSolverConfig, SolverConfig
from resnet_det.engine import solver as solver_module
from resnet_det.engine.solver import build_lr_scheduler, build_optimizer, lr_factor, scaled_lr
from resnet_det.errors import ConfigError


def _cfg(schema=SolverConfig, **overrides):
    return OmegaConf.merge(OmegaConf.structured(schema), overrides)


def _lrs(cfg, iterations):
    """The lr the optimiser uses at each of ``iterations`` (0-based), stepping once per iteration."""
    optimizer = build_optimizer(nn.Linear(2, 2), cfg)
    scheduler = build_lr_scheduler(optimizer, cfg)
    seen = {}
    for it in range(max(iterations) + 1):
        if it in iterations:
            seen[it] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    return seen


def test_linear_scaling_rule():
    assert scaled_lr(_cfg(base_lr=0.001, reference_batch_size=8, batch_size=16)) == pytest.approx(0.002)
    assert scaled_lr(_cfg(base_lr=0.1, reference_batch_size=128, batch_size=32)) == pytest.approx(0.025)
    with pytest.raises(ConfigError, match="solver.batch_size=0"):
        scaled_lr(_cfg(batch_size=0))


def test_optimizer_takes_only_trainable_parameters_with_the_paper_settings():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    optimizer = build_optimizer(model, _cfg(base_lr=0.01, reference_batch_size=8, batch_size=4))
    params = optimizer.param_groups[0]["params"]
    assert {id(p) for p in params} == {id(p) for p in [*model[1].parameters(), *model[2].parameters()]}
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == pytest.approx((0.005, 0.9, 1e-4))
    model.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(model, _cfg())


def test_linear_warmup_then_steps():
    cfg = _cfg(base_lr=0.1, reference_batch_size=8, batch_size=8, warmup_iters=10, warmup_factor=0.01,
               warmup_method="linear", steps=[20, 30], gamma=0.1, max_iter=40)
    lrs = _lrs(cfg, [0, 5, 9, 10, 19, 20, 29, 30, 39])
    assert lrs == pytest.approx({
        0: 0.001,  # warmup_factor * base
        5: 0.1 * (0.01 * 0.5 + 0.5),  # halfway up the ramp
        9: 0.1 * (0.01 * 0.1 + 0.9),
        10: 0.1,
        19: 0.1,
        20: 0.01,
        29: 0.01,
        30: 0.001,
        39: 0.001,
    })


def test_constant_warmup_is_the_paper_cifar110_recipe():
    # ResNet-110: lr 0.01 for the first 400 iterations, then 0.1, /10 at 32k and 48k.
    cfg = _cfg(ClsSolverConfig, warmup_iters=400, warmup_factor=0.1, warmup_method="constant")
    assert cfg.base_lr == 0.1 and list(cfg.steps) == [32000, 48000]
    assert _lrs(cfg, [0, 399, 400]) == pytest.approx({0: 0.01, 399: 0.01, 400: 0.1})
    kwargs = dict(steps=cfg.steps, gamma=cfg.gamma, warmup_iters=400, warmup_factor=0.1, warmup_method="constant")
    assert [lr_factor(i, **kwargs) for i in (31999, 32000, 47999, 48000, 63999)] == pytest.approx(
        [1.0, 0.1, 0.1, 0.01, 0.01]
    )


def test_explicit_max_iter_and_steps_replace_the_config(caplog):
    cfg = _cfg(base_lr=1.0, reference_batch_size=8, batch_size=8, warmup_iters=0, steps=[1000], max_iter=5000)
    optimizer = build_optimizer(nn.Linear(1, 1), cfg)
    with caplog.at_level(logging.WARNING, logger=solver_module.__name__):
        scheduler = build_lr_scheduler(optimizer, cfg, max_iter=6, steps=[2, 8])
    assert "[8] are not before max_iter=6" in caplog.text
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1.0, 1.0, 0.1, 0.1])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"warmup_method": "cosine"}, "solver.warmup_method='cosine': use one of linear, constant"),
        ({"steps": [300, 200]}, r"solver.steps=\[300, 200\]: list the iterations in increasing order"),
        ({"warmup_factor": 0.0}, "0 < warmup_factor <= 1"),
    ],
)
def test_bad_schedules_are_config_errors(overrides, message):
    cfg = _cfg(**overrides)
    with pytest.raises(ConfigError, match=message):
        build_lr_scheduler(torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1), cfg)
