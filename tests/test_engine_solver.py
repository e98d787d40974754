"""SGD settings, the linear scaling rule, and the warm-up + multi-step schedule."""

import logging

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from resnet_det.config import ClassificationConfig, DetectionConfig, load_config
from resnet_det.config.defaults import ClsSolverConfig, SolverConfig
from resnet_det.engine import solver as solver_module
from resnet_det.engine.solver import build_lr_scheduler, build_optimizer, lr_factor, scaled_lr
from resnet_det.errors import ConfigError


def _cfg(schema=SolverConfig, **overrides):
    return OmegaConf.merge(OmegaConf.structured(schema), overrides)


def _loaded(schema, solver_overrides):
    return load_config(schema, None, [f"solver.{key}={value}" for key, value in solver_overrides.items()])


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
    cfg = _cfg(
        base_lr=0.1,
        reference_batch_size=8,
        batch_size=8,
        warmup_iters=10,
        warmup_factor=0.01,
        warmup_method="linear",
        steps=[20, 30],
        gamma=0.1,
        max_iter=40,
    )
    lrs = _lrs(cfg, [0, 5, 9, 10, 19, 20, 29, 30, 39])
    assert lrs == pytest.approx(
        {
            0: 0.001,  # warmup_factor * base
            5: 0.1 * (0.01 * 0.5 + 0.5),  # halfway up the ramp
            9: 0.1 * (0.01 * 0.1 + 0.9),
            10: 0.1,
            19: 0.1,
            20: 0.01,
            29: 0.01,
            30: 0.001,
            39: 0.001,
        }
    )


def test_constant_warmup_holds_the_factor_for_warmup_iters():
    # A fixed-length form of the paper's ResNet-110 warm-up (whose recipe uses the error rule,
    # below): lr 0.01 for 400 iterations, then 0.1, /10 at 32k and 48k.
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
    with pytest.raises(ConfigError, match=message):  # when the config loads, before anything is built
        _loaded(DetectionConfig, overrides)
    if "warmup_method" not in overrides:  # a Literal: no SolverConfig holds another value
        with pytest.raises(ConfigError, match=message):
            build_lr_scheduler(torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1), SolverConfig(**overrides))


def _stepped_lrs(scheduler, optimizer, observe, values):
    """Run one iteration per value: observe it, step; returns the lr each iteration trained at."""
    lrs = []
    for value in values:
        lrs.append(optimizer.param_groups[0]["lr"])
        observe(value)
        optimizer.step()
        scheduler.step()
    return lrs


def test_plateau_rule_divides_the_lr_when_the_validation_error_stops_improving():
    cfg = _cfg(
        ClsSolverConfig,
        lr_policy="plateau",
        steps=[],
        plateau_patience=2,
        plateau_threshold=0.5,
        base_lr=0.1,
        reference_batch_size=128,
        batch_size=128,
    )
    optimizer = build_optimizer(nn.Linear(2, 2), cfg)
    scheduler = build_lr_scheduler(optimizer, cfg)
    # One evaluation per iteration here. 40 beats 50; 39.8 and 39.9 do not beat 40 by 0.5 points:
    # two in a row, so /10 from the next iteration. 30 is a new best; two more 30s: /10 again;
    # the last 30 is the first of the next count.
    errors = [50.0, 40.0, 39.8, 39.9, 30.0, 30.0, 30.0, 30.0]
    lrs = _stepped_lrs(scheduler, optimizer, scheduler.observe_val_error, errors)
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001)
    assert (scheduler.best_val_error, scheduler.plateau_drops) == (30.0, 2)

    # The rule's progress is in the checkpoint (and the settings are not): a fresh scheduler
    # loaded from it (with its optimiser, as the trainer resumes) takes the same next decisions.
    state = scheduler.state_dict()
    assert "patience" not in state and state["plateau_drops"] == 2 and state["evals_without_improvement"] == 1
    restored_opt = build_optimizer(nn.Linear(2, 2), cfg)
    restored = build_lr_scheduler(restored_opt, cfg)
    restored_opt.load_state_dict(optimizer.state_dict())
    restored.load_state_dict(state)
    for s, o in ((scheduler, optimizer), (restored, restored_opt)):
        assert _stepped_lrs(s, o, s.observe_val_error, [30.0, 30.0]) == pytest.approx([0.001, 0.0001])
        assert o.param_groups[0]["lr"] == pytest.approx(0.0001)


def test_steps_policy_ignores_validation_errors():
    cfg = _cfg(ClsSolverConfig, steps=[3], base_lr=0.1, reference_batch_size=128, batch_size=128)
    optimizer = build_optimizer(nn.Linear(2, 2), cfg)
    scheduler = build_lr_scheduler(optimizer, cfg)
    lrs = _stepped_lrs(scheduler, optimizer, scheduler.observe_val_error, [50.0] * 5)
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01])


def test_warmup_lasts_until_the_running_training_error_is_below_the_threshold():
    # The paper's ResNet-110 rule: 0.01 until the training error is below 80%, then 0.1.
    cfg = _cfg(ClsSolverConfig, warmup_until_error=80.0, warmup_factor=0.1, warmup_iters=0)
    optimizer = build_optimizer(nn.Linear(2, 2), cfg)
    scheduler = build_lr_scheduler(optimizer, cfg)
    assert scheduler.warming_up_by_error
    window = solver_module.TRAIN_ERROR_WINDOW
    # A lucky batch (10%) among 90% errors does not end it: the rule reads a running mean.
    errors = [90.0] * 5 + [10.0] + [90.0] * 30
    # Then 60%: the mean of the last `window` errors falls below 80 at the k-th 60 with
    # 90 - 30 k / window < 80.
    k = next(k for k in range(1, window + 1) if 90 - 30 * k / window < 80)
    errors += [60.0] * k + [95.0] * 3  # once over, it stays over whatever the error does
    lrs = _stepped_lrs(scheduler, optimizer, scheduler.observe_train_error, errors)
    ends = 36 + k  # the first iteration at the full lr
    assert lrs[:ends] == pytest.approx([0.01] * ends)
    assert lrs[ends:] == pytest.approx([0.1] * 3)
    assert scheduler.warmup_ended_at == ends and not scheduler.warming_up_by_error
    # Steps still count from iteration 0 (32k and 48k in the recipe), after the warm-up.
    assert scheduler.factor(32000) == pytest.approx(0.1)

    state = scheduler.state_dict()
    fresh = build_lr_scheduler(build_optimizer(nn.Linear(2, 2), cfg), cfg)
    fresh.load_state_dict(state)
    assert fresh.warmup_ended_at == ends and fresh.get_last_lr() == pytest.approx([0.1])


def test_warmup_rule_state_mid_way_is_checkpointed():
    cfg = _cfg(ClsSolverConfig, warmup_until_error=80.0, warmup_factor=0.1, warmup_iters=0)
    window = solver_module.TRAIN_ERROR_WINDOW
    a_opt = build_optimizer(nn.Linear(2, 2), cfg)
    a = build_lr_scheduler(a_opt, cfg)
    _stepped_lrs(a, a_opt, a.observe_train_error, [70.0] * (window - 1))
    assert a.warming_up_by_error  # the window is not full yet
    b_opt = build_optimizer(nn.Linear(2, 2), cfg)
    b = build_lr_scheduler(b_opt, cfg)
    b.load_state_dict(a.state_dict())
    for s, o in ((a, a_opt), (b, b_opt)):
        assert _stepped_lrs(s, o, s.observe_train_error, [70.0, 70.0]) == pytest.approx([0.01, 0.1])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lr_policy": "cosine"}, "solver.lr_policy='cosine': use one of steps, plateau"),
        ({"lr_policy": "plateau"}, r"lr_policy=plateau decides the lr drops itself: set solver.steps=\[\]"),
        ({"lr_policy": "plateau", "steps": [], "plateau_patience": 0}, "plateau_patience=0"),
        ({"warmup_until_error": 80.0, "warmup_iters": 400}, "set solver.warmup_iters=0"),
        ({"warmup_until_error": 80.0, "warmup_method": "linear"}, "solver.warmup_method=constant"),
        ({"warmup_until_error": 180.0}, r"warmup_until_error=180.0: give a training error in percent"),
    ],
)
def test_bad_rules_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):  # when the config loads, before anything is built
        _loaded(ClassificationConfig, overrides)
    if "lr_policy" not in overrides or overrides["lr_policy"] != "cosine":  # a Literal otherwise
        with pytest.raises(ConfigError, match=message):
            build_lr_scheduler(torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1), ClsSolverConfig(**overrides))
