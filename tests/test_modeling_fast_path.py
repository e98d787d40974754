"""The inference fast path gives the plain path's detections, for both heads and each switch."""

import pytest
import torch
from torch import nn

from backbones.norm import FrozenBatchNorm2d
from resnet_det.config import DetectionConfig, load_config
from resnet_det.modeling import build_detector, fold_frozen_bn, prepare_for_inference, to_channels_last

OVERRIDES = [
    "model.backbone.name=r18",
    "model.rpn.pre_nms_topk_test=200",
    "model.rpn.post_nms_topk_test=40",
    "model.roi_heads.score_thresh=0.0",
    "model.roi_heads.detections_per_image=20",
    "model.roi_heads.fc_dim=64",
    "model.fpn_channels=32",
]


def random_frozen_bn_(model: nn.Module) -> None:
    """ImageNet-like statistics instead of the identity, so that folding has something to fold."""
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)


def model_and_images(head, pooler="roi_align"):
    torch.manual_seed(0)
    resolution = 14 if head == "c4" else 7
    overrides = [f"model.head={head}", f"model.roi_heads.pooler={pooler}"]
    overrides.append(f"model.roi_heads.pooler_resolution={resolution}")
    model = build_detector(load_config(DetectionConfig, None, [*overrides, *OVERRIDES]), 3).eval()
    with torch.no_grad():
        random_frozen_bn_(model)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in [(64, 96), (80, 64)]]
    return model, images


def assert_same_detections(plain, fast):
    for p, f in zip(plain, fast):
        assert len(p["boxes"]) > 0
        assert torch.equal(p["labels"], f["labels"])
        torch.testing.assert_close(f["boxes"], p["boxes"], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(f["scores"], p["scores"], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("head", ["c4", "fpn"])
@pytest.mark.parametrize("fold_bn, channels_last", [(True, True), (True, False), (False, True)])
def test_fast_path_matches_plain_path(head, fold_bn, channels_last):
    model, images = model_and_images(head)
    with torch.inference_mode():
        plain = model(images)
    fast_model = prepare_for_inference(model, fold_bn=fold_bn, channels_last=channels_last)
    with torch.inference_mode():
        fast = fast_model(images)
    assert_same_detections(plain, fast)
    frozen_left = sum(isinstance(m, FrozenBatchNorm2d) for m in fast_model.modules())
    assert (frozen_left == 0) == fold_bn
    assert not fast_model.training and not any(p.requires_grad for p in fast_model.parameters())
    conv = fast_model.rpn.head.conv[0][0]  # 3 x 3: a 1 x 1 kernel is contiguous in both layouts
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("head", ["c4", "fpn"])
def test_fast_path_matches_plain_path_with_roi_pool(head):
    model, images = model_and_images(head, pooler="roi_pool")
    with torch.inference_mode():
        plain = model(images)
        fast = prepare_for_inference(model)(images)
    assert_same_detections(plain, fast)


def test_prepare_for_inference_leaves_the_trained_model_alone():
    model, images = model_and_images("c4")
    model.train()
    keys = set(model.state_dict())
    prepare_for_inference(model)
    assert model.training and set(model.state_dict()) == keys
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.roi_heads.box_head.res5.modules())


def test_fold_frozen_bn_folds_backbone_and_res5_head_in_place():
    model, images = model_and_images("c4")
    with torch.no_grad():
        plain = model(images)
    assert fold_frozen_bn(model) is model
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert model.backbone.conv1.bias is not None
    assert model.roi_heads.box_head.res5[0].conv1.bias is not None
    assert model.roi_heads.box_head.res5[0].downsample[0].bias is not None
    assert isinstance(model.roi_heads.box_head.res5[0].downsample[1], nn.Identity)
    with torch.no_grad():
        assert_same_detections(plain, model(images))


def test_to_channels_last_converts_weights_and_input_batches():
    model, images = model_and_images("fpn")
    to_channels_last(model)
    assert model.backbone.bottom_up.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        model(images)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)


def test_compiled_backbone_matches_plain_path_and_keeps_state_dict_names():
    """torch.compile of the backbone (aot_eager: the compiler's graph capture without generating C++)."""
    model, images = model_and_images("fpn")
    with torch.inference_mode():
        plain = model(images)
    fast_model = prepare_for_inference(model, compile_backend="aot_eager")
    assert fast_model.backbone._compiled_call_impl is not None
    assert model.backbone._compiled_call_impl is None
    with torch.no_grad():
        fast = fast_model(images)
    assert_same_detections(plain, fast)
    assert fast_model.state_dict().keys() == prepare_for_inference(model).state_dict().keys()
