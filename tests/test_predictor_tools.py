"""Loading a trained detector back: tools/infer.py (image, folder, video) and tools/eval.py --run,
on a run folder made in the test (random weights), and checkpoints that do not fit the config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from test_train_det import write_tiny_coco

from resnet_det.config import DetectionConfig, load_config
from resnet_det.engine.predictor import Predictor, load_detector
from resnet_det.errors import CheckpointError
from resnet_det.modeling import build_detector

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
CLASSES = ["circle", "triangle", "rectangle"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as train_det.py leaves it: config.yaml and model_final.pth with its meta."""
    root = tmp_path_factory.mktemp("run")
    ann, images = write_tiny_coco(root / "data", n=4)
    cfg = load_config(
        DetectionConfig,
        None,
        [
            "model.head=fpn",
            "model.backbone.name=r18",
            "model.backbone.weights=null",
            "model.roi_heads.score_thresh=0.0",
            "model.rpn.post_nms_topk_test=20",
            "input.min_size_test=96",
            "input.max_size_test=128",
            "dataloader.num_workers=0",
            f"datasets.custom.tiny.images={images}",
            f"datasets.custom.tiny.annotations={ann}",
            "datasets.train=[tiny]",
            "datasets.test=[tiny]",
        ],
    )
    torch.manual_seed(0)
    model = build_detector(cfg, len(CLASSES))
    (root / "out").mkdir()
    (root / "out" / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    meta = {
        "kind": "detection",
        "arch": "r18",
        "head": "fpn",
        "num_classes": 3,
        "class_names": CLASSES,
        "label_to_category_id": {1: 1, 2: 2, 3: 3},
        "input_format": {
            "channel_order": "RGB",
            "pixel_mean": [123.675, 116.28, 103.53],
            "pixel_std": [58.395, 57.12, 57.375],
        },
    }
    torch.save({"model": model.state_dict(), "iteration": 10, "meta": meta}, root / "out" / "model_final.pth")
    return root / "out", images


def test_predictor_returns_boxes_in_the_original_frame(run_dir):
    run, images = run_dir
    loaded = load_detector(run=run)
    predictor = Predictor(loaded, torch.device("cpu"), score_thresh=0.0)
    image = cv2.imread(str(sorted(images.iterdir())[0]))[:, :, ::-1].copy()
    det = predictor(image)
    assert len(det["boxes"]) > 0
    h, w = image.shape[:2]
    assert det["boxes"][:, 2].max() <= w and det["boxes"][:, 3].max() <= h and det["boxes"].min() >= 0
    assert set(det["labels"].tolist()) <= {1, 2, 3}


def test_checkpoint_that_does_not_fit_the_config_is_refused(run_dir, tmp_path):
    run, _ = run_dir
    other = tmp_path / "c4.yaml"
    other.write_text("model:\n  head: c4\n  backbone:\n    name: r18\n")
    with pytest.raises(CheckpointError, match="head=fpn but the config says c4"):
        load_detector(config=other, weights=run / "model_final.pth")
    state = torch.load(run / "model_final.pth", weights_only=False)
    state["meta"]["num_classes"] = 5
    torch.save(state, tmp_path / "five.pth")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_detector(config=run / "config.yaml", weights=tmp_path / "five.pth")
    proc = subprocess.run(
        [sys.executable, "tools/eval.py", "--config", str(other), "--weights", str(run / "model_final.pth")],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_infer_on_an_image_a_folder_and_a_video(run_dir, tmp_path):
    run, images = run_dir
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (160, 128))
    for path in sorted(images.iterdir()):
        writer.write(cv2.resize(cv2.imread(str(path)), (160, 128)))
    writer.release()
    first = sorted(images.iterdir())[0]
    for source, expect in ((first, 1), (images, 4), (video, 4)):
        out = tmp_path / f"out_{source.name}"
        proc = subprocess.run(
            [
                sys.executable,
                "tools/infer.py",
                "--run",
                str(run),
                "--input",
                str(source),
                "--output",
                str(out),
                "--score-thresh",
                "0.0",
            ],
            cwd=REPO,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        results = json.loads((out / "detections.json").read_text())
        assert len(results) == expect
        assert all(set(r["classes"]) <= set(CLASSES) for r in results)
        if source == video:
            capture = cv2.VideoCapture(str(out / "clip_detections.mp4"))
            assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
        else:
            drawn = cv2.imread(str(out / first.name))
            original = cv2.imread(str(first))
            assert drawn.shape == original.shape and not np.array_equal(drawn, original)


def test_eval_run_writes_the_report(run_dir, tmp_path):
    run, _ = run_dir
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "tools/eval.py", "--run", str(run), "--output", str(out)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["num_images"] == 4 and report["checkpoint"].endswith("model_final.pth")
    assert len(report["config_hash"]) == 12
    for name in ("report.md", "pr_curves.png", "detections.json"):
        assert (out / name).is_file()


def _tool(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_tool", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checkpoint_best_is_used_when_asked_and_the_report_says_so(run_dir, tmp_path, capsys):
    import shutil

    run, images = run_dir
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    with pytest.raises(CheckpointError, match=f"{copy} holds no model_best.pth: .*use --checkpoint last"):
        load_detector(run=copy, checkpoint="best")
    state = torch.load(copy / "model_final.pth", weights_only=True)
    weights = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    best = {"metric": "tiny/AP", "mode": "max", "value": 0.25, "iteration": 6, "ema": True}
    torch.save({**state, "model": weights, "iteration": 6, "best": best}, copy / "model_best.pth")

    loaded = load_detector(run=copy, checkpoint="best")
    assert loaded.checkpoint == copy / "model_best.pth" and loaded.best == best
    assert loaded.describe() == f"checkpoint {copy / 'model_best.pth'} (best tiny/AP 0.25, EMA weights, iteration 6)"
    assert torch.equal(
        loaded.model.state_dict()["roi_heads.box_predictor.cls_score.bias"],
        weights["roi_heads.box_predictor.cls_score.bias"],
    )
    assert load_detector(run=copy).checkpoint == copy / "model_final.pth"  # the default is unchanged

    _tool("eval").main(["--run", str(copy), "--checkpoint", "best", "--output", str(tmp_path / "eval")])
    assert "evaluating checkpoint " + str(copy / "model_best.pth") in capsys.readouterr().err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["checkpoint"] == str(copy / "model_best.pth") and report["best_checkpoint"] == best

    image = next(iter(sorted(images.iterdir())))
    _tool("infer").main(
        ["--run", str(copy), "--checkpoint", "best", "--input", str(image), "--output", str(tmp_path / "out")]
    )
    assert "detecting with checkpoint " + str(copy / "model_best.pth") in capsys.readouterr().err
