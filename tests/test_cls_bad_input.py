"""Bad input through tools/train_cls.py (a subprocess): one line `error: ...`, exit status 2, or a
skip with a count where the user asked for it (data.skip_bad_images=true)."""

import subprocess

import pytest
from data_fixtures import make_image_folder
from test_cls_tool import QUICK, run_tool


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-2000:]
    assert sum(line.startswith("error: ") for line in proc.stderr.splitlines()) == 1
    for fragment in fragments:
        assert fragment in last, last
    return last


def test_an_empty_class_folder_is_a_one_line_error(tmp_path):
    make_image_folder(tmp_path / "f" / "train", {"a": 2, "b": 2})
    make_image_folder(tmp_path / "f" / "val", {"a": 1, "b": 1})
    (tmp_path / "f" / "train" / "empty").mkdir()
    proc = run_tool("--dataset", "folder", "--data-root", "f", "--output", "run", *QUICK, cwd=tmp_path)
    assert_one_line_error(proc, "f/train/empty has no images")


@pytest.fixture
def folder_with_a_corrupt_image(tmp_path):
    make_image_folder(tmp_path / "f" / "train", {"a": 4, "b": 4})
    make_image_folder(tmp_path / "f" / "val", {"a": 1, "b": 1})
    (tmp_path / "f" / "train" / "a" / "0.png").write_bytes(b"not an image")
    return tmp_path


def test_an_unreadable_image_is_a_one_line_error(folder_with_a_corrupt_image):
    # With the recipe's data-loader workers: the error comes from a worker process.
    proc = run_tool(
        "--dataset", "folder", "--data-root", "f", "--output", "run", *QUICK, cwd=folder_with_a_corrupt_image
    )
    assert_one_line_error(proc, "f/train/a/0.png", "data.skip_bad_images=true")


def test_an_unreadable_image_is_skipped_and_counted_when_asked(folder_with_a_corrupt_image):
    proc = run_tool(
        "--dataset",
        "folder",
        "--data-root",
        "f",
        "--output",
        "run",
        "data.skip_bad_images=true",
        "--model",
        "cifar_r8",
        "dataloader.num_workers=0",
        *QUICK,
        cwd=folder_with_a_corrupt_image,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping an unreadable image (1 in this process so far)" in proc.stderr
    assert "f/train/a/0.png" in proc.stderr


def test_conflicting_flags_are_a_one_line_error(tmp_path):
    proc = run_tool("--epochs", "3", "--max-iter", "10", cwd=tmp_path)
    assert_one_line_error(proc, "--epochs and --max-iter both set the length of training")
