"""The loop's hooks on a toy model: their order, user hooks from config and Python, the best
checkpoint, early stopping, EMA, gradient accumulation, the end-of-run summary, and exact resumption
with every hook on."""

import json
import logging
import os
import signal
from itertools import count

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from backbones.norm import FrozenBatchNorm2d
from resnet_det.config import ClassificationConfig, load_config
from resnet_det.config.defaults import SolverConfig
from resnet_det.engine import hooks as hooks_module
from resnet_det.engine.hooks import (
    EMA,
    HOOKS,
    BestCheckpoint,
    EarlyStopping,
    HookBase,
    hooks_from_config,
)
from resnet_det.engine.solver import build_lr_scheduler, build_optimizer, scaled_lr
from resnet_det.engine.trainer import Trainer, TrainingInterrupted, set_deterministic
from resnet_det.errors import ConfigError

BATCH = 8
TEACHER = torch.randn(4, 3, generator=torch.Generator().manual_seed(5))


def _batches(start, batch=BATCH):
    for it in count(start):
        x = torch.randn(batch, 4, generator=torch.Generator().manual_seed(it))
        yield x, (x @ TEACHER).argmax(dim=1)


def _solver(max_iter, batch=BATCH, accumulate=1, lr=0.2):
    return SolverConfig(
        base_lr=lr,
        reference_batch_size=BATCH,
        batch_size=batch,
        accumulate_steps=accumulate,
        max_iter=max_iter,
        steps=[],
        warmup_iters=0,
        weight_decay=0.0,
    )


class Recorder(HookBase):
    """A user hook with state: counts the steps it saw."""

    def __init__(self):
        self.steps = 0

    def after_step(self):
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


def _make(out, *, max_iter=12, scores=None, on_step=None, accumulate=1, **kwargs):
    """A toy trainer; ``scores`` maps an iteration to the metric its evaluation reports."""
    set_deterministic(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    solver = _solver(max_iter, accumulate=accumulate)
    optimizer = build_optimizer(model, solver)
    trainer = None

    def step_fn(model, batch):
        if on_step is not None:
            on_step(trainer.iter + 1)
        x, y = batch
        keep = torch.randperm(len(x))[: len(x) - 2]  # the global RNG, as RPN sampling
        return {"loss_cls": nn.functional.cross_entropy(model(x[keep]), y[keep])}, {}

    seen = []

    def eval_fn(module, iteration):
        seen.append((iteration, module))
        torch.rand(3)
        return {"val/score": scores[iteration] if scores else float(iteration)}

    options = dict(checkpoint_period=4, log_period=2, progress=False, eval_fn=eval_fn, eval_period=2)
    options.update(kwargs)
    trainer = Trainer(
        model=model,
        optimizer=optimizer,
        scheduler=build_lr_scheduler(optimizer, solver),
        make_loader=_batches,
        step_fn=step_fn,
        max_iter=max_iter,
        output_dir=out,
        accumulate_steps=accumulate,
        **options,
    )
    trainer.seen = seen
    return trainer


def _lines(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_default_hooks_and_their_order(tmp_path):
    trainer = _make(
        tmp_path,
        ema=EMA(0.9),
        best=BestCheckpoint("val/score"),
        early_stopping=EarlyStopping("val/score", patience=2),
        user=[Recorder()],
    )
    later = type("Later", (HookBase,), {})()
    trainer.register_hooks([later])
    assert [h.name for h in trainer.hooks] == [
        "EMA",
        "MetricsWriter",
        "Evaluation",
        "BestCheckpoint",
        "EarlyStopping",
        "Recorder",
        "Later",
        "PeriodicCheckpointer",
        "StopOnSignal",
        "RunSummary",
    ]
    assert all(h.trainer is trainer for h in trainer.hooks)
    plain = _make(tmp_path / "plain", eval_fn=None)
    assert [h.name for h in plain.hooks] == ["MetricsWriter", "PeriodicCheckpointer", "StopOnSignal", "RunSummary"]
    with pytest.raises(ConfigError, match="hook Recorder is there twice"):
        trainer.register_hooks([Recorder()])


@HOOKS.register("test_recorder")
class RegisteredRecorder(Recorder):
    @classmethod
    def from_config(cls, cfg):
        hook = cls()
        hook.seed = cfg.train.seed
        return hook


def test_hooks_from_config_by_name_and_dotted_path():
    cfg = load_config(
        ClassificationConfig,
        None,
        [
            "train.hooks=[test_recorder,test_engine_hooks.Recorder]",
            "train.ema.enabled=true",
            "train.ema.decay=0.99",
            "train.early_stopping.patience=3",
            "train.eval_period=10",
            "train.seed=4",
        ],
    )
    parts = hooks_from_config(cfg, "classification")
    assert [type(h).__name__ for h in parts["user"]] == ["RegisteredRecorder", "Recorder"]
    assert parts["user"][0].seed == 4
    assert parts["ema"].decay == 0.99 and parts["ema"].use_for_eval
    assert parts["best"].tracked.metric == "val/top1_err" and parts["best"].tracked.mode == "min"
    assert parts["early_stopping"].patience == 3

    for hooks, message in (
        ("[no_such_hook]", "unknown hook 'no_such_hook'"),
        ("[os.nothing_here]", r"train.hooks\[0\]=os.nothing_here: cannot import it"),
        ("[collections.OrderedDict]", "is not a subclass of resnet_det.engine.hooks.HookBase"),
    ):
        bad = OmegaConf.merge(cfg, {"train": {"hooks": OmegaConf.create(hooks)}})
        with pytest.raises(ConfigError, match=message):
            hooks_from_config(bad, "classification")
    no_period = OmegaConf.merge(cfg, {"train": {"eval_period": 0}})
    with pytest.raises(ConfigError, match="train.early_stopping.patience counts evaluations: set train.eval_period"):
        hooks_from_config(no_period, "classification")


def test_default_best_metric_by_task():
    assert hooks_module.default_best_metric("classification") == "val/top1_err"
    assert hooks_module.default_best_metric("detection", ["coco_val"], "coco") == "coco_val/AP"
    assert hooks_module.default_best_metric("detection", ["voc07"], "voc07") == "voc07/mAP"
    assert hooks_module.default_best_metric("detection", ["x"], None) == "x/AP|x/mAP"  # what the data gives
    errors = EarlyStopping("val/top1_err", patience=1, min_delta=0.5).tracked
    assert errors.mode == "min"  # by its name
    errors.best = 10.0
    assert errors.improves(9.4) and not errors.improves(9.6) and not errors.improves(11.0)
    ap = BestCheckpoint("x/AP|x/mAP").tracked
    assert ap.mode == "max" and ap.value({"x/mAP": 0.3, "x/loss": 1.0}) == ("x/mAP", 0.3)
    with pytest.raises(ConfigError, match="train.best.mode='up': use max or min"):
        BestCheckpoint("x/AP", mode="up")


def test_best_checkpoint_and_early_stopping_write_why_and_the_summary(tmp_path, caplog):
    scores = {2: 0.5, 4: 0.7, 6: 0.6, 8: 0.65, 10: 0.9, 12: 0.1}
    trainer = _make(
        tmp_path,
        scores=scores,
        best=BestCheckpoint("val/score"),
        early_stopping=EarlyStopping("val/score", patience=2),
        images_per_iter=BATCH,
    )
    trainer.resume_or_start(resume=False)
    with caplog.at_level(logging.INFO):
        results = trainer.train()

    reason = "early stopping: val/score has not improved on 0.7 (iteration 4) for 2 evaluations"
    assert trainer.iter == 8 and results["val/score"] == 0.65
    assert f"iteration 8: {reason}; final checkpoint written" in caplog.text
    assert _lines(tmp_path)[-1] == {"iteration": 8, "stop_reason": reason}
    best = torch.load(tmp_path / "model_best.pth", weights_only=True)
    assert best["iteration"] == 4
    assert best["best"] == {"metric": "val/score", "mode": "max", "value": 0.7, "iteration": 4, "ema": False}
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert final["iteration"] == 8
    assert all(torch.equal(final["model"][k], v) for k, v in trainer.module.state_dict().items())
    assert not all(torch.equal(best["model"][k], v) for k, v in trainer.module.state_dict().items())

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "stopped early" and summary["stop_reason"] == reason
    assert (summary["best_metric"], summary["best_value"], summary["best_iteration"]) == ("val/score", 0.7, 4)
    assert summary["final_value"] == 0.65 and summary["iteration"] == 8
    assert summary["train_seconds"] > 0 and summary["images_per_second"] > 0 and summary["peak_memory_mb"] > 0
    assert "summary: stopped early at iteration 8/12, best val/score 0.7 at iteration 4, final 0.65, " in caplog.text

    again = _make(tmp_path, scores=scores, early_stopping=EarlyStopping("val/score", patience=2))
    assert again.resume_or_start(resume=True) == 8
    assert again.train() == {"iteration": 8.0}  # stopped for good: resuming trains no further


def test_a_metric_the_evaluation_lacks_is_named(tmp_path):
    trainer = _make(tmp_path, best=BestCheckpoint("val/AP", mode=None))
    trainer.resume_or_start(resume=False)
    with pytest.raises(
        ConfigError, match=r"train.best.metric=val/AP: not among the evaluation's metrics \(val/score\)"
    ):
        trainer.train()


def test_ema_follows_the_weights_and_is_what_evaluation_sees(tmp_path):
    decay = 0.8
    expected = {}

    trainer = _make(tmp_path, max_iter=6, ema=EMA(decay), best=BestCheckpoint("val/score"))
    ema = {k: v.clone() for k, v in trainer.module.state_dict().items()}

    class Follow(HookBase):
        def after_step(self):
            for k, v in self.trainer.module.state_dict().items():
                ema[k] = decay * ema[k] + (1 - decay) * v
            expected[self.trainer.iter] = {k: v.clone() for k, v in ema.items()}

    trainer.register_hooks([Follow()])
    trainer.resume_or_start(resume=False)
    trainer.train()
    ema_hook = trainer.hooks[0]
    for k, v in expected[6].items():
        torch.testing.assert_close(ema_hook.module.state_dict()[k], v, rtol=1e-6, atol=1e-7)
    assert [it for it, _ in trainer.seen] == [2, 4, 6]
    assert all(module is ema_hook.module for _, module in trainer.seen)
    best = torch.load(tmp_path / "model_best.pth", weights_only=True)
    assert best["best"]["ema"] is True and best["iteration"] == 6
    assert all(torch.equal(best["model"][k], v) for k, v in ema_hook.module.state_dict().items())
    with pytest.raises(ConfigError, match=r"train.ema.decay=1.5: give a decay in \(0, 1\)"):
        EMA(1.5)


def _all_hooks(out, **kwargs):
    scores = {i: (0.1 * i if i <= 6 else 0.5) for i in range(1, 41)}
    return _make(
        out,
        max_iter=16,
        scores=scores,
        accumulate=2,
        ema=EMA(0.7),
        best=BestCheckpoint("val/score"),
        early_stopping=EarlyStopping("val/score", patience=50),
        user=[Recorder()],
        images_per_iter=2 * BATCH,
        **kwargs,
    )


def test_resume_is_exact_with_every_hook_on(tmp_path):
    straight = _all_hooks(tmp_path / "straight")
    straight.resume_or_start(resume=False)
    straight.train()

    def stop_at_7(iteration):
        if iteration == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    part = _all_hooks(tmp_path / "part", on_step=stop_at_7)
    part.resume_or_start(resume=False)
    with pytest.raises(TrainingInterrupted):
        part.train()
    resumed = _all_hooks(tmp_path / "part")
    assert resumed.resume_or_start(resume=True) == 7
    resumed.train()

    def states(trainer):
        return {h.name: h.state_dict() for h in trainer.hooks}

    a, b = states(straight), states(resumed)
    for name in ("EMA",):
        for k, v in a[name]["weights"].items():
            assert torch.equal(v, b[name]["weights"][k]), k
    assert a["BestCheckpoint"] == b["BestCheckpoint"] and a["EarlyStopping"] == b["EarlyStopping"]
    assert a["Recorder"] == b["Recorder"] == {"steps": 16}
    for k, v in straight.module.state_dict().items():
        assert torch.equal(v, resumed.module.state_dict()[k]), k
    best_a, best_b = (
        torch.load(d / "model_best.pth", weights_only=True) for d in (tmp_path / "straight", tmp_path / "part")
    )
    assert best_a["iteration"] == best_b["iteration"] == 6
    assert all(torch.equal(best_a["model"][k], best_b["model"][k]) for k in best_a["model"])
    summary = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["best_iteration"] == 6 and summary["final_value"] == 0.5


class _FrozenBNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = FrozenBatchNorm2d(6)
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def _accumulating(out, batch, accumulate, iterations):
    set_deterministic(3)
    model = _FrozenBNNet()
    solver = _solver(iterations, batch=batch, accumulate=accumulate, lr=0.1)
    optimizer = build_optimizer(model, solver)
    pool = torch.randn(64 * iterations, 3, 6, 6, generator=torch.Generator().manual_seed(9))
    labels = torch.arange(len(pool)) % 3

    def make_loader(start):  # micro-batches, counted from ``start``: the same images however split
        for i in count(start):
            yield pool[i * batch : (i + 1) * batch], labels[i * batch : (i + 1) * batch]

    def step_fn(model, data):
        x, y = data
        return {"loss_cls": nn.functional.cross_entropy(model(x), y)}, {}

    trainer = Trainer(
        model=model,
        optimizer=optimizer,
        scheduler=build_lr_scheduler(optimizer, solver),
        make_loader=make_loader,
        step_fn=step_fn,
        max_iter=iterations,
        output_dir=out,
        checkpoint_period=100,
        accumulate_steps=accumulate,
        progress=False,
    )
    trainer.resume_or_start(resume=False)
    trainer.train()
    return trainer.module.state_dict(), optimizer.param_groups[0]["lr"]


def test_accumulating_n_steps_of_b_equals_one_step_of_n_times_b(tmp_path):
    small, lr_small = _accumulating(tmp_path / "acc", batch=4, accumulate=4, iterations=3)
    big, lr_big = _accumulating(tmp_path / "big", batch=16, accumulate=1, iterations=3)
    assert lr_small == lr_big == pytest.approx(0.1 * 16 / BATCH)  # the effective batch scales the lr
    for key, value in big.items():
        torch.testing.assert_close(small[key], value, rtol=1e-5, atol=1e-6)
    plain, _ = _accumulating(tmp_path / "plain", batch=4, accumulate=1, iterations=3)
    assert not torch.allclose(plain["head.weight"], big["head.weight"], atol=1e-4)
    assert scaled_lr(_solver(1, batch=4, accumulate=4, lr=0.1)) == pytest.approx(0.2)
    with pytest.raises(ConfigError, match="solver.accumulate_steps=0: must be at least 1"):
        scaled_lr(_solver(1, accumulate=0))


def test_an_explicit_lr_is_used_as_given_with_accumulation():
    from argparse import Namespace

    from resnet_det.cli import training_overrides
    from resnet_det.config import DetectionConfig

    flags = dict(output=None, device=None, amp=False, max_iter=None, weights=None, data_root=None, seed=None)
    args = Namespace(**flags, batch_size=2, lr=0.02)
    overrides = training_overrides(args, "model.backbone.weights", "datasets.root")
    cfg = load_config(DetectionConfig, None, [*overrides, "solver.accumulate_steps=4"])
    assert scaled_lr(cfg.solver) == pytest.approx(0.02)
    assert "reference_batch_size: 8" in OmegaConf.to_yaml(cfg, resolve=True)  # what config.yaml records
