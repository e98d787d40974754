"""Device and batch checks, single-process helpers, and two CPU workers (gloo) training together,
including a worker that dies and one that hangs."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnet_det.engine import distributed
from resnet_det.engine.distributed import DistInfo, init_distributed, resolve_device
from resnet_det.errors import ConfigError, TrainingError
from resnet_det.utils import comm
from resnet_det.utils.comm import per_process_batch_size

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "scripts" / "toy_train.py"
MAX_ITER = 12


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device='gpu': use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    if torch.cuda.is_available():
        assert resolve_device("auto", local_rank=0) == torch.device("cuda", 0)
        assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    else:
        assert resolve_device("auto") == torch.device("cpu")
        message = "train.device=cuda:1: no CUDA GPU is available here; use train.device=cpu$"
        with pytest.raises(ConfigError, match=message):
            resolve_device("cuda:1")


def test_batch_size_must_divide_among_processes():
    assert per_process_batch_size(8, 4) == 2
    with pytest.raises(ConfigError) as info:
        per_process_batch_size(6, 4)
    assert str(info.value) == "solver.batch_size=6 does not divide among 4 processes: use a multiple of 4"
    with pytest.raises(ConfigError, match="solver.batch_size=0 does not divide among 4 processes"):
        per_process_batch_size(0, 4)


def test_without_torchrun_everything_is_one_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    info = init_distributed("cpu", timeout_s=5)
    assert info == DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")) and info.is_main
    assert not torch.distributed.is_initialized()
    assert (comm.get_rank(), comm.get_world_size(), comm.is_main_process()) == (0, 1, True)
    assert comm.all_gather_object({"a": 1}) == [{"a": 1}]
    assert comm.reduce_dict({"loss": torch.tensor(0.5), "acc": 2}) == {"acc": 2.0, "loss": 0.5}
    comm.barrier()
    distributed.cleanup()


def test_a_worker_that_never_joins_is_a_training_error(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    for key, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(key, value)
    with pytest.raises(TrainingError, match=r"rank 0 could not join the other 1 worker\(s\) within 1 s \("):
        init_distributed("cpu", timeout_s=1)
    assert not torch.distributed.is_initialized()


def test_one_gpu_named_for_several_processes_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="train.device=cuda:1 names one GPU but torchrun started 2 processes"):
        init_distributed("cuda:1")


def test_two_workers_train_together_and_only_rank_0_writes(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(SCRIPT),
        "--output",
        str(tmp_path),
        "--max-iter",
        str(MAX_ITER),
    ]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    digests = dict(line.split(" weights ") for line in run.stdout.splitlines() if " weights " in line)
    assert set(digests) == {"rank 0", "rank 1"}
    assert digests["rank 0"] == digests["rank 1"]  # gradients were averaged, so the replicas agree

    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == list(range(1, MAX_ITER + 1))
    assert {line["rank"] for line in lines} == {0.5}  # scalars are averaged over the ranks
    assert len(list((tmp_path / "tb").iterdir())) == 1
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [
        "model_0000005.pth",
        "model_0000010.pth",
        "model_0000012.pth",
        "model_final.pth",
    ]
    state = torch.load(tmp_path / "model_0000012.pth", weights_only=False)
    # Each rank's own random stream is kept (the script seeds every rank differently).
    assert len(state["rng_per_rank"]) == 2
    assert not torch.equal(state["rng_per_rank"][0]["torch"], state["rng_per_rank"][1]["torch"])
    assert torch.equal(state["rng_per_rank"][0]["torch"], state["rng"]["torch"])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_accumulated_gradients_are_all_reduced_on_the_last_micro_step_only(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(SCRIPT),
        "--output",
        str(tmp_path),
        "--max-iter",
        "4",
        "--accumulate",
        "3",
    ]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    digests = dict(line.split(" weights ") for line in run.stdout.splitlines() if " weights " in line)
    assert digests["rank 0"] == digests["rank 1"]
    # The toy model's gradients fit one DDP bucket: one all-reduce per iteration, not per micro-batch.
    reduces = dict(line.split(" gradient all-reduces ") for line in run.stdout.splitlines() if "all-reduces" in line)
    assert reduces == {"rank 0": "4", "rank 1": "4"}


def _launch_two(output: Path, *extra: str):
    """Two workers started by hand with torchrun's environment, so the test controls each one."""
    common = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    cmd = [sys.executable, str(SCRIPT), "--output", str(output), "--max-iter", str(MAX_ITER), *extra]
    return [
        subprocess.Popen(
            cmd,
            env=_env(RANK=str(r), LOCAL_RANK=str(r), **common),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]


def _stop_all(workers) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
        worker.communicate()


# The collective timeout of these tests: long enough for both workers to start on a busy machine
# (it also bounds the rendezvous), short enough to keep the tests quick.
TIMEOUT_S = 8


def test_a_dead_worker_makes_the_other_stop_with_a_message(tmp_path):
    workers = _launch_two(tmp_path, "--die-at", "4", "--timeout", str(TIMEOUT_S))
    try:
        assert workers[1].wait(timeout=TIMEOUT_S + 60) == 1
        died = time.monotonic()
        _, err = workers[0].communicate(timeout=TIMEOUT_S + 30)
        assert time.monotonic() - died < TIMEOUT_S
        assert workers[0].returncode == 2, err
        assert "error: another worker stopped (rank 0 lost it at iteration 5: " in err
    finally:
        _stop_all(workers)


def test_a_hung_worker_makes_the_other_fail_after_the_collective_timeout(tmp_path):
    workers = _launch_two(tmp_path, "--hang-at", "4", "--timeout", str(TIMEOUT_S))
    try:
        _, err = workers[0].communicate(timeout=TIMEOUT_S + 60)
        assert workers[0].returncode == 2, err
        assert "error: another worker stopped (rank 0 lost it at iteration 5: " in err
        assert "timeout" in err.lower() or "timed out" in err.lower()
        assert workers[1].poll() is None  # still hanging: rank 0 did not wait for it
    finally:
        _stop_all(workers)
