"""One writer per run folder: a second training on a folder in use is refused and writes nothing, a
dead holder's lock is taken over, another host's lock needs --force-unlock, leftovers of a cut-short
save are removed at the next start, rank 0 holds the lock under torchrun, and --resume never starts a
run over."""

import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_engine_distributed import _free_port
from test_engine_resume import SCRIPT, _env, _finish, _start, _wait_for_checkpoint_after
from test_engine_trainer import _make

from resnet_det.engine.checkpoint import Checkpointer
from resnet_det.engine.run_lock import LOCK_FILE, RunLock, read_holder
from resnet_det.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()


def folder_hashes(folder: Path) -> dict:
    """Every file under ``folder`` (recursively) with the SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _iterations(output: Path) -> list:
    return [json.loads(line)["iteration"] for line in (output / "metrics.jsonl").read_text().splitlines()]


def test_a_second_training_on_a_folder_in_use_is_refused_and_changes_nothing(tmp_path):
    holder = _start(tmp_path, "--sleep", "0.1")
    try:
        _wait_for_checkpoint_after(tmp_path, holder, 0)
        holder.send_signal(signal.SIGSTOP)  # keep it holding the lock, but still, so the folder stands still
        record = read_holder(tmp_path)
        assert record["pid"] == holder.pid and record["host"] == HOST and record["started"]
        before = folder_hashes(tmp_path)
        for extra in ((), ("--resume",)):
            second = _start(tmp_path, *extra)
            out, err = second.communicate(timeout=120)
            assert second.returncode == 2, err
            assert err.count("\n") == 1 and err.startswith(
                f"error: {tmp_path} is in use by another training process, pid {holder.pid} on host {HOST} (started "
            ), err
            assert folder_hashes(tmp_path) == before
    finally:
        holder.send_signal(signal.SIGCONT)
    _finish(holder)
    assert _iterations(tmp_path) == list(range(1, 31))  # one unbroken run
    assert not (tmp_path / LOCK_FILE).exists()


def test_the_lock_of_a_killed_holder_is_taken_over_and_its_leftovers_removed(tmp_path):
    first = _start(tmp_path, "--sleep", "0.1")
    _wait_for_checkpoint_after(tmp_path, first, 0)
    first.kill()
    first.communicate()
    assert read_holder(tmp_path)["pid"] == first.pid  # the record stays; the flock died with it
    # What a process killed in the middle of saving leaves: temporary files of atomic writes.
    leftovers = [f".model_0000010.pth.{first.pid}.0a1b2c3d.tmp", f".last_checkpoint.{first.pid}.deadbeef.tmp"]
    for name in leftovers:
        (tmp_path / name).write_bytes(b"half a save")
    (tmp_path / "notes.tmp").write_text("not ours")

    resumed = _start(tmp_path, "--resume")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert f"taking over the lock of pid {first.pid} on host {HOST}" in err
    assert f"removed 2 temporary file(s) of a save that was cut short: {', '.join(sorted(leftovers))}" in err
    assert not any((tmp_path / name).exists() for name in leftovers) and (tmp_path / "notes.tmp").exists()
    assert (tmp_path / "model_final.pth").is_file() and not (tmp_path / LOCK_FILE).exists()
    assert _iterations(tmp_path) == list(range(1, 31))


def test_under_torchrun_rank_0_holds_the_lock_and_a_relayed_sigusr1_stops_every_worker(tmp_path):
    env = {k: v for k, v in _env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            "--signals-to-handle=SIGTERM,SIGINT,SIGUSR1",
            str(SCRIPT),
            "--output",
            str(tmp_path),
            "--max-iter",
            "300",
            "--sleep",
            "0.1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_checkpoint_after(tmp_path, launcher, 0)
    assert read_holder(tmp_path)["pid"] != launcher.pid  # a worker (rank 0) holds it, not torchrun
    launcher.send_signal(signal.SIGUSR1)
    _, err = launcher.communicate(timeout=120)
    stops = re.findall(r"stopped: SIGUSR1: interrupted at iteration (\d+); checkpoint saved", err)
    assert len(stops) == 2 and len(set(stops)) == 1, err[-3000:]  # both ranks, at the same iteration
    assert launcher.returncode == 1  # torchrun's own status after a signal, as the README says
    assert (tmp_path / "last_checkpoint").read_text().strip() == f"model_{int(stops[0]):07d}.pth"
    assert not (tmp_path / LOCK_FILE).exists()


def _foreign_lock(folder: Path) -> bytes:
    folder.mkdir(parents=True, exist_ok=True)
    data = json.dumps({"host": "gpu-node-17", "pid": 4242, "started": "2026-01-01T00:00:00+00:00"}).encode()
    (folder / LOCK_FILE).write_bytes(data)
    return data


def test_a_lock_left_by_another_host_needs_force_unlock(tmp_path, caplog):
    data = _foreign_lock(tmp_path)
    with pytest.raises(ConfigError) as info:
        RunLock(tmp_path).acquire()
    message = str(info.value)
    assert "locked by pid 4242 on host gpu-node-17" in message and f"another host than this one ({HOST})" in message
    assert message.endswith("if that host's training is gone, run again with --force-unlock")
    assert (tmp_path / LOCK_FILE).read_bytes() == data and sorted(os.listdir(tmp_path)) == [LOCK_FILE]

    with caplog.at_level(logging.WARNING), RunLock(tmp_path, force=True):
        assert read_holder(tmp_path)["pid"] == os.getpid()
    assert "--force-unlock: taking over the lock of pid 4242 on host gpu-node-17" in caplog.text
    assert not (tmp_path / LOCK_FILE).exists()


def test_train_tools_take_the_lock_first_and_say_how_to_force_it(tmp_path):
    data = _foreign_lock(tmp_path / "run")
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "train_cls.py"),
            "--output",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            "--max-iter",
            "1",
            "--batch-size",
            "4",
            "--data-root",
            str(tmp_path / "data"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "run again with --force-unlock" in proc.stderr, proc.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "run")) == [LOCK_FILE] and (tmp_path / "run" / LOCK_FILE).read_bytes() == data
    assert not (tmp_path / "data").exists()  # refused before it even generated the data

    forced = _start(tmp_path / "run", "--force-unlock")
    _, err = forced.communicate(timeout=120)
    assert forced.returncode == 0 and "--force-unlock: taking over the lock of pid 4242" in err, err


def test_the_lock_is_reentrant_in_one_process_and_released_by_the_outermost(tmp_path):
    with RunLock(tmp_path) as outer:
        with RunLock(tmp_path):
            pass
        assert read_holder(tmp_path)["pid"] == os.getpid()  # the inner exit did not release it
        trainer = _make(tmp_path, max_iter=2)  # the Trainer takes it again around its phases
        trainer.resume_or_start(resume=False)
        trainer.train()
        assert (tmp_path / LOCK_FILE).exists() and outer._fd is not None
    assert not (tmp_path / LOCK_FILE).exists()


def test_resume_with_checkpoints_that_all_fail_to_load_is_refused(tmp_path):
    run = _make(tmp_path, max_iter=6, checkpoint_period=3)
    run.resume_or_start(resume=False)
    run.train()
    for path in tmp_path.glob("model_*.pth"):
        path.write_bytes(path.read_bytes()[:64])  # truncated: every checkpoint is unreadable
    before = folder_hashes(tmp_path)
    with pytest.raises(CheckpointError) as info:
        _make(tmp_path, max_iter=6, checkpoint_period=3).resume_or_start(resume=True)
    assert str(info.value) == (
        f"--resume: no checkpoint in {tmp_path} can be resumed (model_0000003.pth, model_0000006.pth, model_final.pth; "
        "the warnings above say why): move them away to start over, or choose another --output"
    )
    assert folder_hashes(tmp_path) == before  # metrics.jsonl kept, nothing started over

    # A folder with only the final model (no optimiser state) cannot be continued either.
    for path in Checkpointer(tmp_path).periodic_checkpoints() + [tmp_path / "last_checkpoint"]:
        path.unlink()
    torch.save({"model": run.module.state_dict(), "iteration": 6}, tmp_path / "model_final.pth")
    with pytest.raises(CheckpointError, match=r"can be resumed \(model_final.pth;"):
        _make(tmp_path, max_iter=6).resume_or_start(resume=True)

    # An empty folder with --resume still starts from scratch (what a requeued first job does).
    assert _make(tmp_path / "empty", max_iter=2).resume_or_start(resume=True) == 0


_DIES_LEAVING_A_CHILD = """
import os, signal, sys, time
from resnet_det.engine.run_lock import RunLock
RunLock(sys.argv[1]).acquire()
if os.fork() == 0:  # like a data-loader worker: it shares the locked descriptor
    time.sleep(float(sys.argv[2]))
    os._exit(0)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _kill_holder_leaving_a_child(folder: Path, child_lives_s: float) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", _DIES_LEAVING_A_CHILD, str(folder), str(child_lives_s)], env=env)
    assert proc.returncode == -signal.SIGKILL
    holder = read_holder(folder)
    assert holder["host"] == socket.gethostname()


def test_a_killed_holders_workers_are_waited_for_then_the_lock_is_taken(tmp_path, caplog):
    """SIGKILL of training leaves its forked loader workers holding the flock for a few seconds."""
    _kill_holder_leaving_a_child(tmp_path, child_lives_s=2)
    with caplog.at_level(logging.WARNING), RunLock(tmp_path):
        assert read_holder(tmp_path)["pid"] == os.getpid()
    assert "processes it started still hold" in caplog.text and "waiting up to" in caplog.text


def test_leftover_processes_that_outlive_the_wait_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr("resnet_det.engine.run_lock.ORPHAN_WAIT_S", 1)
    _kill_holder_leaving_a_child(tmp_path, child_lives_s=6)
    with pytest.raises(ConfigError, match=r"is gone, but processes it started still hold .*fuser -v"):
        RunLock(tmp_path).acquire()
