"""The benchmark compares like with like: torchvision's stock model is set up as torchvision
fine-tunes it (frozen BN, 3 trainable backbone stages), as ours trains by default."""

import pytest
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from resnet_det.engine.benchmark import (
    COCO_CLASSES,
    Settings,
    build_detector,
    detection_config,
    run_benchmarks,
    stock_model,
)


def _trainable_stages(body: nn.Module):
    return {name.split(".")[0] for name, p in body.named_parameters() if p.requires_grad}


def test_the_stock_model_trains_what_ours_trains_with_frozen_bn():
    s = Settings(train_size=128, max_size=256, proposals=50)
    stock = stock_model(s, training=True)
    body = stock.backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in stock.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in body.modules()) == 53  # every BN of a ResNet-50
    assert _trainable_stages(body) == {"layer2", "layer3", "layer4"}  # trainable_backbone_layers=3
    assert (stock.transform.min_size, stock.transform.max_size) == ((128,), 256)
    assert stock.rpn._post_nms_top_n["training"] == 50 and stock.rpn.nms_thresh == 1.0

    ours = build_detector(detection_config(s, training=True), COCO_CLASSES)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ours.modules())
    ours_trainable = sum(p.numel() for p in ours.backbone.bottom_up.parameters() if p.requires_grad)
    stock_trainable = sum(p.numel() for p in body.parameters() if p.requires_grad)
    assert ours_trainable == stock_trainable  # the same res3..res5 weights get gradients in both
    ours_frozen = sum(p.numel() for p in ours.backbone.bottom_up.parameters() if not p.requires_grad)
    assert ours_frozen == sum(p.numel() for p in body.parameters() if not p.requires_grad)


def test_inference_paths_are_timed_in_one_run_with_their_start_up():
    """bf16 autocast and onnxruntime are timed beside ours and stock, each with a ratio (the int8
    export that ``--precision int8`` adds is tested in test_export.py)."""
    pytest.importorskip("onnxruntime", reason="the export extra (pip install -e .[export]) is not installed")
    s = Settings(
        backbone="r18",
        size=64,
        max_size=96,
        proposals=10,
        detections=10,
        warmup=0,
        runs=1,
        precisions=["fp32", "bf16"],
        runtimes=["torch", "onnxruntime"],
    )
    result = run_benchmarks(s, ["inference"], log=lambda _: None)
    paths = ("ours", "stock", "ours_bf16", "ours_onnxruntime")
    assert set(result["figures"]) == {f"inference/{p}" for p in paths}
    assert result["figures"]["inference/ours_onnxruntime"]["startup_s"] > 0
    assert "startup_s" not in result["figures"]["inference/ours"]
    for p in paths[2:]:
        assert result["ratios"][f"inference/{p}"] > 0
