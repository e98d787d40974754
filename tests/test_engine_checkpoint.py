"""Atomic writes, last_checkpoint, pruning, corrupt-file fallback and RNG state round trips."""

import errno
import logging
import random

import numpy as np
import pytest
import torch

from resnet_det.engine import checkpoint as ckpt
from resnet_det.engine.checkpoint import Checkpointer, capture_rng_state, restore_rng_state
from resnet_det.errors import CheckpointError, ConfigError
from resnet_det.utils.file_io import atomic_torch_save, atomic_write_text


def _state(value: float) -> dict:
    return {
        "model": {"w": torch.full((4,), value)},
        "optimizer": {},
        "scheduler": {},
        "rng": capture_rng_state(),
    }


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_text_replaces_the_file(tmp_path):
    target = tmp_path / "sub" / "config.yaml"
    atomic_write_text(target, "a: 1\n")
    atomic_write_text(target, "a: 2\n")
    assert target.read_text() == "a: 2\n"
    assert _leftovers(target.parent) == []


def test_disk_full_at_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "model_0000100.pth"
    atomic_torch_save({"v": 1}, target)

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.os, "replace", disk_full)
    with pytest.raises(CheckpointError) as info:
        atomic_torch_save({"v": 2}, target)
    message = str(info.value)
    assert message == (
        f"cannot write {target}: No space left on device; free space or choose another --output; "
        "the previous checkpoint is intact"
    )
    assert "\n" not in message
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"v": 1}
    assert _leftovers(tmp_path) == []


def test_failure_mid_write_removes_the_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    atomic_write_text(target, "old\n")
    real_fdopen = ckpt.os.fdopen

    class FailingFile:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:3])
            raise OSError(errno.EACCES, "Permission denied")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(ckpt.os, "fdopen", lambda fd, mode: FailingFile(real_fdopen(fd, mode)))
    with pytest.raises(CheckpointError, match=r"Permission denied; make the folder writable or choose another"):
        atomic_write_text(target, "new contents\n")
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_save_names_the_new_file_in_last_checkpoint_and_prunes(tmp_path):
    checkpointer = Checkpointer(tmp_path, max_keep=2)
    checkpointer.save_final(_state(0.0))
    stale = tmp_path / ".model_0000007.pth.999999999.0a1b2c3d.tmp"  # left by a process killed mid-save
    stale.write_bytes(b"partial")
    unrelated = tmp_path / "notes.tmp"
    unrelated.write_text("mine")
    for it in (10, 20, 30, 40):
        path = checkpointer.save(it, _state(float(it)))
        assert (tmp_path / "last_checkpoint").read_text().strip() == path.name
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [
        "model_0000030.pth",
        "model_0000040.pth",
        "model_final.pth",
    ]
    assert not stale.exists() and unrelated.exists()
    state = checkpointer.load_latest()
    assert state["iteration"] == 40 and torch.equal(state["model"]["w"], torch.full((4,), 40.0))


def test_a_failed_save_leaves_last_checkpoint_on_the_previous_file(tmp_path, monkeypatch):
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(5, _state(5.0))

    def disk_full(obj, f):
        f.write(b"PK\x03\x04partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="model_0000010.pth: No space left on device"):
        checkpointer.save(10, _state(10.0))
    monkeypatch.undo()
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000005.pth"
    assert not (tmp_path / "model_0000010.pth").exists()
    assert checkpointer.load_latest()["iteration"] == 5


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    checkpointer = Checkpointer(tmp_path)
    for it in (1, 2, 3):
        checkpointer.save(it, _state(float(it)))
    newest = tmp_path / "model_0000003.pth"
    newest.write_bytes(newest.read_bytes()[:100])

    with caplog.at_level(logging.WARNING, logger=ckpt.__name__):
        state = checkpointer.load_latest()

    assert state["iteration"] == 2
    assert torch.equal(state["model"]["w"], torch.full((4,), 2.0))
    assert f"checkpoint {newest} is corrupt (" in caplog.text
    assert f"resuming from {tmp_path / 'model_0000002.pth'} instead" in caplog.text


def test_missing_or_incomplete_checkpoints_fall_back_and_none_loads_gives_none(tmp_path, caplog):
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(1, {"model": {}})  # not resumable: lacks optimizer, scheduler, rng
    checkpointer.save(2, _state(2.0))
    (tmp_path / "model_0000002.pth").unlink()

    with caplog.at_level(logging.WARNING, logger=ckpt.__name__):
        assert checkpointer.load_latest() is None

    assert "model_0000002.pth does not exist" in caplog.text
    assert "model_0000001.pth cannot be resumed (it lacks optimizer, scheduler, rng); no older" in caplog.text


def test_load_errors_are_one_line_checkpoint_errors(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match=r"does not exist; give the path of a model_\*\.pth file"):
        checkpointer.load(tmp_path / "model_0000007.pth")
    garbage = tmp_path / "model_0000008.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as info:
        checkpointer.load(garbage)
    assert str(info.value).startswith(f"checkpoint {garbage} is corrupt (")
    assert "\n" not in str(info.value)
    weights_only = tmp_path / "weights.pth"
    torch.save({"layer.weight": torch.zeros(2)}, weights_only)
    with pytest.raises(CheckpointError, match="weights.pth holds no model weights; give a model_"):
        checkpointer.load(weights_only)


def test_empty_folder_and_other_ranks(tmp_path):
    assert Checkpointer(tmp_path / "nothing").load_latest() is None
    follower = Checkpointer(tmp_path, is_main=False)
    assert follower.save(3, _state(3.0)) == tmp_path / "model_0000003.pth"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="train.max_checkpoints_kept=0"):
        Checkpointer(tmp_path, max_keep=0)


def test_rng_state_round_trip_survives_a_checkpoint(tmp_path):
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    atomic_torch_save({"rng": state}, tmp_path / "rng.pth")
    random.random(), np.random.rand(), torch.rand(3)

    restore_rng_state(torch.load(tmp_path / "rng.pth", weights_only=False)["rng"])

    again = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[0] == again[0] and expected[1] == again[1] and torch.equal(expected[2], again[2])
