"""Bit-exact resumption on the real pipelines, not a toy: ``tools/train_det.py`` (both heads) and
``tools/train_cls.py`` with two data-loader workers, killed with SIGKILL in the middle of a run and
resumed, end with the weights of an uninterrupted run, bit for bit; under torchrun (gloo) the two
replicas hold equal weights."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from data_fixtures import make_image_folder
from test_train_det import tiny_det_args, write_tiny_coco

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
MAX_ITER = 8
KILL_AFTER = 4  # the checkpoint to wait for before SIGKILL: the run is then between 4 and 8

pytestmark = pytest.mark.slow


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_bit_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def kill_mid_run(cmd, output: Path, timeout: float = 300) -> None:
    """Start ``cmd``, SIGKILL it once the checkpoint of KILL_AFTER is complete and named by
    ``last_checkpoint``, and check that it was killed before it finished."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marker = output / "last_checkpoint"
    deadline = time.monotonic() + timeout
    try:
        while not (marker.is_file() and marker.read_text().strip() == f"model_{KILL_AFTER:07d}.pth"):
            assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint to kill after"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (output / "model_final.pth").exists(), "killed too late: the run had finished"


def run(cmd) -> None:
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    return write_tiny_coco(tmp_path_factory.mktemp("tiny"), n=8)


def det_cmd(ann, images, head, output):
    return [
        sys.executable,
        str(REPO / "tools/train_det.py"),
        *tiny_det_args(
            ann,
            images,
            output,
            "--max-iter",
            str(MAX_ITER),
            "datasets.test=[]",
            "dataloader.num_workers=2",
            "train.checkpoint_period=2",
            "train.max_checkpoints_kept=2",
            head=head,
            val=False,
            lr=0.01,
        ),
    ]


@pytest.mark.parametrize("head", ["fpn", "c4"])
def test_train_det_killed_and_resumed_equals_uninterrupted(tmp_path, tiny_coco, head):
    ann, images = tiny_coco
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(det_cmd(ann, images, head, straight))
    kill_mid_run(det_cmd(ann, images, head, killed), killed)
    proc = run(det_cmd(ann, images, head, killed) + ["--resume"])
    assert f"resumed {killed} at iteration" in proc.stderr
    assert_bit_equal(_weights(straight / "model_final.pth"), _weights(killed / "model_final.pth"))
    resumed_from = int(proc.stderr.split(f"resumed {killed} at iteration ")[1].split()[0])
    assert KILL_AFTER <= resumed_from < MAX_ITER


def cls_cmd(data, output):
    return [
        sys.executable,
        str(REPO / "tools/train_cls.py"),
        "--dataset",
        "folder",
        "--data-root",
        str(data),
        "--output",
        str(output),
        "--device",
        "cpu",
        "--max-iter",
        str(MAX_ITER),
        "--batch-size",
        "4",
        "dataloader.num_workers=2",
        "train.checkpoint_period=2",
        "train.log_period=2",
        # Every hook with a state on: EMA, best checkpoint, early stopping (patient enough not to
        # stop), with gradient accumulation.
        "train.eval_period=2",
        "train.ema.enabled=true",
        "train.ema.decay=0.5",
        "train.early_stopping.patience=100",
        "solver.accumulate_steps=2",
        "input.crop_size=16",
        "input.scale_range=[16,20]",
        "input.test_resize=18",
    ]


def test_train_cls_killed_and_resumed_equals_uninterrupted(tmp_path):
    data = tmp_path / "animals"
    make_image_folder(data / "train", {"cat": 6, "dog": 6}, size=20)
    make_image_folder(data / "val", {"cat": 2, "dog": 2}, size=20)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(cls_cmd(data, straight))
    kill_mid_run(cls_cmd(data, killed), killed)
    proc = run(cls_cmd(data, killed) + ["--resume"])
    assert f"resumed {killed} at iteration" in proc.stderr
    assert_bit_equal(_weights(straight / "model_final.pth"), _weights(killed / "model_final.pth"))
    last = f"model_{MAX_ITER:07d}.pth"
    a, b = (torch.load(run / last, map_location="cpu", weights_only=True)["hooks"] for run in (straight, killed))
    assert set(a) == {"EMA", "BestCheckpoint", "EarlyStopping", "RunSummary"}
    assert_bit_equal(a["EMA"]["weights"], b["EMA"]["weights"])
    assert a["BestCheckpoint"] == b["BestCheckpoint"] and a["EarlyStopping"] == b["EarlyStopping"]
    assert_bit_equal(_weights(straight / "model_best.pth"), _weights(killed / "model_best.pth"))


def test_torchrun_replicas_hold_equal_weights(tmp_path, tiny_coco):
    ann, images = tiny_coco
    out = tmp_path / "ddp"
    cmd = det_cmd(ann, images, "fpn", out)
    cmd[1] = str(REPO / "tests" / "scripts" / "ddp_replicas.py")
    run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            *cmd[1:],
            "--device",
            "cpu",
        ]
    )
    rank0, rank1 = torch.load(out / "rank0.pth", weights_only=True), torch.load(out / "rank1.pth", weights_only=True)
    assert_bit_equal(rank0, rank1)
    assert_bit_equal(_weights(out / "model_final.pth"), rank0)  # the dump is the model rank 0 saved
