"""The validation step of load_config: a bad value fails as the config loads, naming the key, the
value and the fix, before any dataset is read or any model built."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_det.config import ClassificationConfig, DetectionConfig, load_config
from resnet_det.engine import train_detection
from resnet_det.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.head=c5", "model.head='c5': unknown detection head 'c5': known detection heads are c4, fpn"),
        ("model.roi_heads.pooler=psroi", "model.roi_heads.pooler='psroi': use one of roi_align, roi_pool"),
        ("model.backbone.norm=ln", "model.backbone.norm='ln': use one of bn, frozen_bn, gn, syncbn"),
        ("model.backbone.shortcut=D", "model.backbone.shortcut='D': use one of A, B, C"),
        ("model.input_format.channel_order=rgb", "model.input_format.channel_order='rgb': use one of RGB, BGR"),
        ("model.input_format.pixel_mean=[1, 2]", r"model.input_format.pixel_mean=\[1.0, 2.0\] needs 3 values"),
        ("model.anchors.aspect_ratios=[0, 1]", r"model.anchors.aspect_ratios=\[0.0, 1.0\]: give positive ratios"),
        ("model.num_classes=0", "model.num_classes=0: a detector needs at least one object class"),
        ("input.size_divisibility=48", "input.size_divisibility=48 must be a multiple of 32"),
        ("solver.warmup_method=cosine", "solver.warmup_method='cosine': use one of linear, constant"),
        ("solver.nonfinite_loss=ignore", "solver.nonfinite_loss='ignore': use one of stop, skip"),
        ("solver.steps=[300, 200]", r"solver.steps=\[300, 200\]: list the iterations in increasing order"),
        ("solver.base_lr=0", "solver.base_lr=0.0: must be positive"),
        ("train.checkpoint_period=0", "train.checkpoint_period=0: must be at least 1"),
        ("datasets.bad_boxes=fix", "datasets.bad_boxes=fix is not possible: a box .*; use skip or stop"),
        ("datasets.missing_image=ignore", "datasets.missing_image='ignore': use one of fix, skip, stop"),
        ("test.metric=voc12", "test.metric='voc12': unknown metric 'voc12'"),
        ("solver.accumulate_steps=0", "solver.accumulate_steps=0: must be at least 1"),
        ("train.ema.decay=1", r"train.ema.decay=1.0: give a decay in \(0, 1\)"),
        ("train.early_stopping.patience=-1", "train.early_stopping.patience=-1: give a number of evaluations"),
        ("train.early_stopping.min_delta=-0.1", "train.early_stopping.min_delta=-0.1: must be >= 0"),
        ("train.best.mode=up", "train.best.mode='up': use one of max, min"),
    ],
)
def test_a_bad_detection_value_fails_as_the_config_loads(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DetectionConfig, None, [override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("solver.lr_policy=cosine", "solver.lr_policy='cosine': use one of steps, plateau"),
        ("model.norm=ln", "model.norm='ln': use one of bn, frozen_bn, gn, syncbn"),
        ("solver.warmup_until_error=180", "solver.warmup_until_error=180.0: give a training error in percent"),
    ],
)
def test_a_bad_classification_value_fails_as_the_config_loads(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ClassificationConfig, None, [override])


def test_a_bad_value_in_a_yaml_file_names_the_file(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model:\n  roi_heads:\n    pooler: psroi\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: model.roi_heads.pooler='psroi': use one of roi_align, roi_pool"):
        load_config(DetectionConfig, recipe)


def test_the_old_name_of_a_renamed_key_names_the_new_one(tmp_path):
    with pytest.raises(
        ConfigError, match="key 'model.input.channel_order' was renamed: use model.input_format.channel_order"
    ):
        load_config(DetectionConfig, None, ["model.input.channel_order=BGR"])
    recipe = tmp_path / "old.yaml"
    recipe.write_text("model:\n  input:\n    pixel_std: [1, 1, 1]\n")
    with pytest.raises(ConfigError, match="old.yaml: key 'model.input' was renamed: use model.input_format"):
        load_config(DetectionConfig, recipe)


def test_train_det_stops_on_a_bad_head_before_reading_data_or_building(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("train_det_tool", ROOT / "tools" / "train_det.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    calls = []
    monkeypatch.setattr(train_detection, "get_datasets", lambda *a, **k: calls.append("datasets"))
    monkeypatch.setattr(train_detection, "build_detector", lambda *a, **k: calls.append("model"))
    output = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        tool.main(["--output", str(output), "model.head=c5"])
    assert info.value.code == 2
    assert "error: " in capsys.readouterr().err
    assert calls == [] and not output.exists()


def test_the_tool_knows_the_registered_heads_when_it_loads_the_config(tmp_path):
    # In a fresh process: the tool imports the layers that register heads before it loads the config.
    output = tmp_path / "run"
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train_det.py"), "--output", str(output), "model.head=c5"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    assert "error: model.head='c5': unknown detection head 'c5'" in run.stderr
    assert not output.exists()
