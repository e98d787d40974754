"""A run folder through the real tools: a refused train_det.py / train_cls.py call changes no byte
of a finished run, --resume over unreadable checkpoints is refused, eval.py / infer.py --run rebuild
the model from the config stored in its checkpoint, also while the run is still training, and
SIGTERM stops train_det.py with the status a scheduler requeues on."""

import logging
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from data_fixtures import make_image_folder
from test_engine_run_lock import folder_hashes
from test_train_det import ENV, REPO, run_tool, tiny_det_args, write_tiny_coco

from resnet_det.engine.predictor import load_detector


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    return write_tiny_coco(tmp_path_factory.mktemp("tiny"), n=4)


def _det_args(tiny_coco, output: Path, *extra: str) -> list:
    return tiny_det_args(*tiny_coco, output, "train.checkpoint_period=2", *extra)


@pytest.fixture(scope="module")
def finished_det_run(tiny_coco, tmp_path_factory):
    run = tmp_path_factory.mktemp("det") / "run"
    proc = run_tool(_det_args(tiny_coco, run, "--max-iter", "2", "datasets.test=[]"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_a_refused_train_det_call_changes_no_byte_of_a_finished_run(tiny_coco, finished_det_run, tmp_path):
    run = tmp_path / "run"
    subprocess.run(["cp", "-a", str(finished_det_run), str(run)], check=True)
    before = folder_hashes(run)
    assert {"config.yaml", "data_report.json", "metrics.jsonl", "model_final.pth", "model_0000002.pth"} <= set(before)
    # Another recipe (lr, size) into the same folder without --resume: refused, nothing rewritten.
    proc = run_tool(_det_args(tiny_coco, run, "--max-iter", "4", "--lr", "0.02", "input.min_size_train=[64]"))
    assert proc.returncode == 2 and "already holds checkpoints: pass --resume" in proc.stderr, proc.stderr[-2000:]
    assert folder_hashes(run) == before

    # --resume where no checkpoint can be read: an error naming them, not a run started over.
    for name in ("model_0000002.pth", "model_final.pth"):
        (run / name).write_bytes(b"PK\x03\x04 truncated")
    before = folder_hashes(run)
    proc = run_tool(_det_args(tiny_coco, run, "--max-iter", "4", "--resume"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: --resume: no checkpoint in {run} can be resumed (model_0000002.pth, model_final.pth;" in proc.stderr
    assert folder_hashes(run) == before


def test_a_refused_train_cls_call_changes_no_byte_of_a_finished_run(tmp_path):
    make_image_folder(tmp_path / "pets" / "train", {"cat": 2, "dog": 2}, size=20)
    make_image_folder(tmp_path / "pets" / "val", {"cat": 1, "dog": 1}, size=20)
    common = [
        sys.executable,
        str(REPO / "tools" / "train_cls.py"),
        "--dataset",
        "folder",
        "--data-root",
        "pets",
        "--output",
        "run",
        "--device",
        "cpu",
        "--batch-size",
        "4",
    ]

    def train(*extra):
        return subprocess.run([*common, *extra], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)

    proc = train("--max-iter", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = folder_hashes(tmp_path / "run")
    assert {"config.yaml", "metrics.jsonl", "model_final.pth"} <= set(before)
    proc = train("--max-iter", "3", "--lr", "0.5")
    assert proc.returncode == 2 and "already holds checkpoints: pass --resume" in proc.stderr, proc.stderr[-2000:]
    assert folder_hashes(tmp_path / "run") == before


def test_run_readers_rebuild_the_model_from_the_checkpoints_config(finished_det_run, tmp_path, caplog):
    run = tmp_path / "run"
    subprocess.run(["cp", "-a", str(finished_det_run), str(run)], check=True)
    trained = yaml.safe_load((run / "config.yaml").read_text())
    edited = {
        **trained,
        "model": {
            **trained["model"],
            "roi_heads": {**trained["model"]["roi_heads"], "score_thresh": 0.99, "nms_thresh": 0.1},
        },
    }
    (run / "config.yaml").write_text(yaml.safe_dump(edited))
    with caplog.at_level(logging.WARNING):
        loaded = load_detector(run=run, overrides=["input.min_size_test=64"])
    assert f"{run / 'config.yaml'} differs from the config stored in {run / 'model_final.pth'}" in caplog.text
    heads = trained["model"]["roi_heads"]
    assert loaded.cfg.model.roi_heads.score_thresh == heads["score_thresh"] != 0.99
    assert loaded.cfg.model.roi_heads.nms_thresh == heads["nms_thresh"] != 0.1
    assert loaded.cfg.input.min_size_test == 64  # overrides still apply on top
    assert loaded.checkpoint == run / "model_final.pth" and loaded.iteration == 2


@pytest.mark.slow
def test_readers_during_training_and_sigterm_exits_75(tiny_coco, tmp_path):
    run = tmp_path / "run"
    trainer = subprocess.Popen(
        [sys.executable, str(REPO / "tools/train_det.py"), *_det_args(tiny_coco, run, "--max-iter", "100000")],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (run / "last_checkpoint").is_file():
            assert trainer.poll() is None, trainer.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
        _, images = tiny_coco
        readers = {
            "evaluating": [str(REPO / "tools/eval.py"), "--run", str(run), "--output", str(tmp_path / "eval")],
            "detecting with": [
                str(REPO / "tools/infer.py"),
                "--run",
                str(run),
                "--input",
                str(sorted(images.iterdir())[0]),
                "--output",
                str(tmp_path / "infer"),
                "--device",
                "cpu",
            ],
        }
        for says, args in readers.items():
            proc = subprocess.run(
                [sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            match = re.search(rf"{says} checkpoint (\S+/model_(\d+)\.pth) \(iteration (\d+)\)", proc.stderr)
            assert match, proc.stderr[-2000:]
            assert Path(match.group(1)).parent == run and int(match.group(2)) == int(match.group(3)) >= 2
        assert trainer.poll() is None and not (run / "model_final.pth").exists()  # it was still training
        assert (tmp_path / "infer" / "detections.json").is_file() and (tmp_path / "eval" / "report.json").is_file()
    finally:
        trainer.send_signal(signal.SIGTERM)
        _, err = trainer.communicate(timeout=300)
    assert trainer.returncode == 75, err[-3000:]
    stopped = re.search(r"stopped: SIGTERM: interrupted at iteration (\d+); checkpoint saved to (\S+);", err)
    assert stopped and (run / "last_checkpoint").read_text().strip() == f"model_{int(stopped.group(1)):07d}.pth"
    assert not (run / "train.lock").exists()
