"""The training loop on a toy model: learning, logs, checkpoints, non-finite losses, evaluation,
signals, gradient clipping, mixed precision and in-process resumption."""

import json
import logging
import os
import signal
from itertools import count

import pytest
import torch
from torch import nn

from resnet_det.config.defaults import SolverConfig
from resnet_det.engine import trainer as trainer_module
from resnet_det.engine.solver import build_lr_scheduler, build_optimizer
from resnet_det.engine.trainer import Trainer, TrainingInterrupted, set_deterministic
from resnet_det.errors import CheckpointError, ConfigError, TrainingError

BATCH = 16
TEACHER = torch.randn(4, 3, generator=torch.Generator().manual_seed(123))


def _batches(start_iter):
    """A stream that depends only on the iteration: resumable at any point."""
    for it in count(start_iter):
        x = torch.randn(BATCH, 4, generator=torch.Generator().manual_seed(it))
        yield x, (x @ TEACHER).argmax(dim=1)


def _make(output_dir, *, max_iter=20, hidden=16, nan_at=(), on_step=None, solver=None, **kwargs) -> Trainer:
    set_deterministic(0)
    model = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))
    solver = solver or SolverConfig(
        base_lr=0.2,
        reference_batch_size=BATCH,
        batch_size=BATCH,
        max_iter=max_iter,
        steps=[max_iter],
        warmup_iters=0,
        weight_decay=0.0,
    )
    optimizer = build_optimizer(model, solver)
    trainer = None

    def step_fn(model, batch):
        x, y = batch
        iteration = trainer.iter + 1
        if on_step is not None:
            on_step(iteration, model)
        keep = torch.randperm(BATCH)[: BATCH // 2]  # uses the global RNG, as RPN sampling does
        logits = model(x[keep])
        loss = nn.functional.cross_entropy(logits, y[keep])
        if iteration in nan_at:
            loss = loss * float("nan")
        accuracy = (logits.argmax(dim=1) == y[keep]).float().mean().item()
        return {"loss_cls": loss}, {"accuracy": accuracy}

    options = dict(checkpoint_period=5, log_period=5, progress=False)
    options.update(kwargs)
    trainer = Trainer(
        model=model,
        optimizer=optimizer,
        scheduler=build_lr_scheduler(optimizer, solver),
        make_loader=_batches,
        step_fn=step_fn,
        max_iter=max_iter,
        output_dir=output_dir,
        **options,
    )
    return trainer


def _metrics(output_dir):
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.module.state_dict().items()}


def test_toy_model_learns_and_leaves_logs_and_checkpoints(tmp_path):
    trainer = _make(
        tmp_path,
        max_iter=60,
        checkpoint_period=20,
        log_period=10,
        meta={"kind": "classification"},
        config_text="solver:\n  base_lr: 0.2\n",
    )
    assert trainer.resume_or_start(resume=False) == 0
    results = trainer.train()

    lines = _metrics(tmp_path)
    assert [line["iteration"] for line in lines] == [10, 20, 30, 40, 50, 60]
    expected_keys = {"iteration", "total_loss", "loss_cls", "accuracy", "lr", "time", "data_time", "eta_seconds"}
    assert all(set(line) == expected_keys for line in lines)
    assert lines[-1]["total_loss"] < 0.6 * lines[0]["total_loss"]
    assert lines[-1]["accuracy"] > lines[0]["accuracy"]
    assert lines[-1]["eta_seconds"] == 0 and lines[0]["eta_seconds"] > 0
    assert results["iteration"] == 60 and results["total_loss"] == lines[-1]["total_loss"]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [
        "model_0000020.pth",
        "model_0000040.pth",
        "model_0000060.pth",
        "model_final.pth",
    ]
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000060.pth"
    final = trainer.checkpointer.load(tmp_path / "model_final.pth")  # as evaluation tools load it
    assert final["meta"] == {"kind": "classification"} and final["config"].startswith("solver:")
    assert all(torch.equal(final["model"][k], v) for k, v in trainer.module.state_dict().items())

    again = _make(tmp_path, max_iter=60)
    assert again.resume_or_start(resume=True) == 60
    assert again.train() == {"iteration": 60.0}
    assert _metrics(tmp_path) == lines


def test_an_existing_run_is_never_overwritten_without_resume(tmp_path):
    first = _make(tmp_path, max_iter=5)
    first.resume_or_start(resume=False)
    first.train()
    with pytest.raises(ConfigError) as info:
        _make(tmp_path, max_iter=5).resume_or_start(resume=False)
    assert str(info.value) == (
        f"{tmp_path} already holds checkpoints: pass --resume to continue it, or choose another --output"
    )


def test_resume_continues_exactly_where_the_checkpoint_left_off(tmp_path):
    full = _make(tmp_path / "full", max_iter=12)
    full.resume_or_start(resume=False)
    full.train()

    def terminate_at_7(iteration, model):
        if iteration == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    part = _make(tmp_path / "part", max_iter=12, log_period=1, on_step=terminate_at_7)
    part.resume_or_start(resume=False)
    with pytest.raises(TrainingInterrupted):
        part.train()
    resumed = _make(tmp_path / "part", max_iter=12, log_period=1)
    assert resumed.resume_or_start(resume=True) == 7
    resumed.train()

    for key, value in _weights(full).items():
        assert torch.equal(value, resumed.module.state_dict()[key]), key
    assert [line["iteration"] for line in _metrics(tmp_path / "part")] == list(range(1, 13))


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = _make(tmp_path, max_iter=20, nan_at={7})
    trainer.resume_or_start(resume=False)
    with pytest.raises(TrainingError) as info:
        trainer.train()
    assert str(info.value) == (
        f"non-finite loss at iteration 7 (loss_cls=nan); the last good checkpoint {tmp_path / 'model_0000005.pth'} "
        "is kept; lower solver.base_lr, set solver.clip_grad_norm, or set solver.nonfinite_loss=skip"
    )
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_0000005.pth"]
    assert torch.load(tmp_path / "model_0000005.pth", weights_only=False)["iteration"] == 5


def test_nonfinite_loss_skip_drops_the_step_and_goes_on(tmp_path, caplog):
    unchanged = []

    def record(iteration, model):
        if iteration in (3, 4):
            unchanged.append([p.detach().clone() for p in model.parameters()])

    trainer = _make(tmp_path, max_iter=10, nan_at={3}, on_step=record, nonfinite_loss="skip")
    trainer.resume_or_start(resume=False)
    with caplog.at_level(logging.WARNING, logger=trainer_module.__name__):
        results = trainer.train()

    assert "non-finite loss at iteration 3 (loss_cls=nan): step skipped (1 so far)" in caplog.text
    assert results["skipped_steps"] == 1 and results["iteration"] == 10
    # The weights going into iteration 4 are those going into the skipped iteration 3.
    assert all(torch.equal(a, b) for a, b in zip(*unchanged))
    assert all(torch.isfinite(p).all() for p in trainer.module.parameters())
    assert torch.load(tmp_path / "model_0000010.pth", weights_only=False)["skipped_steps"] == 1


def test_eval_runs_at_its_period_and_at_the_end_without_changing_training(tmp_path):
    calls = []

    def eval_fn(model, iteration):
        calls.append((iteration, model.training))
        torch.rand(5)  # random draws during evaluation must not shift training's random stream
        return {"val_acc": iteration / 100}

    with_eval = _make(tmp_path / "eval", max_iter=10, eval_fn=eval_fn, eval_period=4)
    with_eval.resume_or_start(resume=False)
    results = with_eval.train()

    assert calls == [(4, False), (8, False), (10, False)]
    assert with_eval.module.training
    assert results["val_acc"] == 0.1
    evals = [line for line in _metrics(tmp_path / "eval") if "val_acc" in line]
    assert [(line["iteration"], line["val_acc"]) for line in evals] == [(4, 0.04), (8, 0.08), (10, 0.1)]

    without = _make(tmp_path / "plain", max_iter=10)
    without.resume_or_start(resume=False)
    without.train()
    for key, value in _weights(without).items():
        assert torch.equal(value, with_eval.module.state_dict()[key]), key


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 75), (signal.SIGUSR1, 75), (signal.SIGINT, 130)])
def test_a_stop_signal_finishes_the_iteration_saves_and_restores_the_handlers(tmp_path, signum, status):
    def stop_at_4(iteration, model):
        if iteration == 4:
            os.kill(os.getpid(), signum)

    before = signal.getsignal(signum)
    trainer = _make(tmp_path, max_iter=20, on_step=stop_at_4)
    trainer.resume_or_start(resume=False)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.train()

    checkpoint = tmp_path / "model_0000004.pth"
    name = signal.Signals(signum).name
    assert (
        str(info.value) == f"{name}: interrupted at iteration 4; checkpoint saved to {checkpoint}; resume with --resume"
    )
    assert info.value.iteration == 4 and isinstance(info.value, TrainingError)
    assert info.value.signal == signum and info.value.exit_status == status
    assert torch.load(checkpoint, weights_only=False)["iteration"] == 4
    assert (tmp_path / "last_checkpoint").read_text().strip() == checkpoint.name
    assert signal.getsignal(signum) is before
    assert not (tmp_path / "train.lock").exists()  # released on the way out


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    def interrupt_twice(iteration, model):
        if iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    trainer = _make(tmp_path, max_iter=20, on_step=interrupt_twice)
    trainer.resume_or_start(resume=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert trainer.iter == 1
    assert signal.getsignal(signal.SIGINT) is before


def test_gradient_clipping_bounds_the_step(tmp_path):
    solver = SolverConfig(
        base_lr=1.0,
        reference_batch_size=BATCH,
        batch_size=BATCH,
        max_iter=1,
        steps=[],
        warmup_iters=0,
        weight_decay=0.0,
        momentum=0.0,
    )
    trainer = _make(tmp_path, max_iter=1, solver=solver, clip_grad_norm=1e-3, log_period=1)
    before = torch.cat([p.detach().flatten().clone() for p in trainer.module.parameters()])
    trainer.resume_or_start(resume=False)
    results = trainer.train()
    after = torch.cat([p.detach().flatten() for p in trainer.module.parameters()])

    assert results["grad_norm"] > 1e-2  # the norm before clipping, as logged
    assert torch.linalg.vector_norm(after - before) == pytest.approx(1e-3, rel=1e-3)


def test_amp_on_cpu_autocasts_to_bfloat16(tmp_path):
    seen = []

    def record(iteration, model):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))

    trainer = _make(tmp_path, max_iter=3, amp=True, on_step=record)
    trainer.resume_or_start(resume=False)
    results = trainer.train()
    assert seen == [(True, torch.bfloat16)] * 3
    assert trainer.scaler is None and torch.isfinite(torch.tensor(results["total_loss"]))
    assert not torch.is_autocast_enabled("cpu")


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    trainer = _make(tmp_path, max_iter=5)
    trainer.resume_or_start(resume=False)
    trainer.train()
    with pytest.raises(CheckpointError, match=r"model_0000005.pth does not fit this model or optimiser \("):
        _make(tmp_path, max_iter=10, hidden=8).resume_or_start(resume=True)


def test_bad_settings_and_a_short_loader_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="solver.nonfinite_loss='ignore': use one of stop, skip"):
        _make(tmp_path, nonfinite_loss="ignore")
    with pytest.raises(ConfigError, match="train.checkpoint_period=0: must be at least 1"):
        _make(tmp_path, checkpoint_period=0)
    trainer = _make(tmp_path, max_iter=5)
    trainer.make_loader = lambda start: iter([next(_batches(start))])
    trainer.resume_or_start(resume=False)
    with pytest.raises(RuntimeError, match=r"make_loader\(0\) ended at iteration 1"):
        trainer.train()
