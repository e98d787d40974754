"""tools/plot_curves.py: training and test error curves of several runs drawn into one PNG."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "plot_curves.py"
# matplotlib's default colours of the first two runs (C0, C1), in OpenCV's BGR order.
C0_BGR, C1_BGR = (180, 119, 31), (14, 127, 255)


def write_run(folder: Path, train_err, test_err, torn_tail: bool = False) -> Path:
    """A metrics.jsonl as train_cls.py writes it: a line per log period, a val line per evaluation."""
    folder.mkdir(parents=True)
    lines = []
    for i, err in enumerate(train_err, start=1):
        lines.append({"iteration": 100 * i, "loss_cls": err / 50, "top1_err": err, "lr": 0.1})
        if i % 5 == 0:
            lines.append({"iteration": 100 * i, "val/top1_err": test_err[i // 5 - 1], "val/top5_err": 1.0})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (folder / "metrics.jsonl").write_text(text + ('{"iteration": 2100, "top1_' if torn_tail else ""))
    return folder


def run_tool(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "RESNET_DET_TRACEBACK"}
    return subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def colour_pixels(image: np.ndarray, bgr) -> int:
    return int((np.abs(image.astype(int) - bgr).max(axis=2) < 40).sum())


def test_curves_of_two_runs_are_drawn_into_a_png(tmp_path):
    steps = np.arange(20)
    plain = write_run(tmp_path / "cifar_plain56", 60 * np.exp(-steps / 10) + 12, [30, 20, 18, 17])
    residual = write_run(tmp_path / "cifar_r56", 60 * np.exp(-steps / 6) + 2, [25, 12, 9, 7], torn_tail=True)
    proc = run_tool(plain, residual, "--output", tmp_path / "curves.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    image = cv2.imread(str(tmp_path / "curves.png"))
    assert image is not None and image.shape == (540, 840, 3)  # 7 x 4.5 inches at 120 dpi
    # Each run's curves (and its legend entry) are drawn in its own colour.
    assert colour_pixels(image, C0_BGR) > 500 and colour_pixels(image, C1_BGR) > 500


def test_a_run_that_never_evaluated_shows_its_training_curve(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"iteration": 20, "top1_err": 50.0}\n{"iteration": 40, "top1_err": 40.0}\n')
    other = write_run(tmp_path / "other", [50.0] * 5, [45.0])
    proc = run_tool(run, other, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_a_folder_without_metrics_is_a_one_line_error(tmp_path):
    good = write_run(tmp_path / "good", [50.0] * 5, [45.0])
    (tmp_path / "empty").mkdir()
    proc = run_tool(good, tmp_path / "empty", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'empty'} has no metrics.jsonl: give the --output folder of a tools/train_cls.py run"
    ]
    assert not (tmp_path / "curves.png").exists()


def test_a_detection_run_has_no_error_curves(tmp_path):
    run = tmp_path / "det"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"iteration": 20, "total_loss": 1.5, "loss_rpn_box": 0.1}\n')
    proc = run_tool(run, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "not detection runs" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
