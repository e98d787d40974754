"""Killing a training process and resuming it gives bit for bit the weights of an uninterrupted run."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "toy_train.py"
MAX_ITER = 30


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _start(output: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(SCRIPT), "--output", str(output), "--max-iter", str(MAX_ITER), *extra]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 60) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def _wait_for_checkpoint_after(output: Path, proc: subprocess.Popen, iteration: int, timeout: float = 60) -> int:
    """Poll until ``last_checkpoint`` names a checkpoint later than ``iteration``; return its iteration."""
    deadline = time.monotonic() + timeout
    while True:
        marker = output / "last_checkpoint"
        newest = int(re.search(r"\d+", marker.read_text()).group()) if marker.is_file() else 0
        if newest > iteration:
            return newest
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no new checkpoint appeared"
        time.sleep(0.02)


def _final_weights(output: Path) -> dict:
    return torch.load(output / "model_final.pth", map_location="cpu", weights_only=False)["model"]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture
def uninterrupted(tmp_path_factory):
    """The run that is never interrupted, started at once so that it overlaps with the others."""
    output = tmp_path_factory.mktemp("uninterrupted")
    proc = _start(output)
    yield lambda: (_finish(proc), _final_weights(output))[1]
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_preempted_then_killed_then_resumed_equals_an_uninterrupted_run(tmp_path, uninterrupted, signum):
    # SIGTERM / SIGUSR1 (a scheduler's preemption or time-limit warning): the process finishes its
    # iteration, saves it and exits with 75, the status to requeue on.
    first = _start(tmp_path, "--sleep", "0.1")
    _wait_for_checkpoint_after(tmp_path, first, 0)
    first.send_signal(signum)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 75, err
    name = signal.Signals(signum).name
    match = re.search(
        rf"stopped: {name}: interrupted at iteration (\d+); checkpoint saved to (\S+); resume with --resume", err
    )
    assert match, err
    stopped_at = int(match.group(1))
    assert 5 <= stopped_at < MAX_ITER
    assert Path(match.group(2)) == tmp_path / f"model_{stopped_at:07d}.pth"
    assert (tmp_path / "last_checkpoint").read_text().strip() == f"model_{stopped_at:07d}.pth"

    # SIGKILL of the resumed run: no chance to save, so the next run goes back to a checkpoint.
    second = _start(tmp_path, "--sleep", "0.1", "--resume")
    killed_after = _wait_for_checkpoint_after(tmp_path, second, stopped_at)
    time.sleep(0.3)  # land somewhere between checkpoints
    second.kill()
    second.communicate()
    assert killed_after < MAX_ITER and not (tmp_path / "model_final.pth").exists()

    _finish(_start(tmp_path, "--resume"))

    _assert_same_weights(_final_weights(tmp_path), uninterrupted())
    # Lines logged after the checkpoint a run resumed from were dropped, not repeated.
    iterations = [json.loads(line)["iteration"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert iterations == list(range(1, MAX_ITER + 1))
