"""build_detector: both heads assemble, train, infer and honour the config (tiny r18 models on CPU)."""

import math

import pytest
import torch
from torch import nn
from torchvision.ops import roi_pool

from backbones import ShapeSpec, build_backbone
from backbones.norm import FrozenBatchNorm2d
from resnet_det.config import DetectionConfig, load_config
from resnet_det.errors import ConfigError
from resnet_det.modeling import build_detector
from resnet_det.modeling.detector import MultiScaleRoIPool, anchor_sizes, build_box_pooler

NUM_CLASSES = 2
TINY = [
    "model.backbone.name=r18",
    "model.rpn.pre_nms_topk_train=200",
    "model.rpn.post_nms_topk_train=32",
    "model.rpn.pre_nms_topk_test=200",
    "model.rpn.post_nms_topk_test=30",
    "model.roi_heads.batch_size_per_image=16",
    "model.roi_heads.fc_dim=64",
    "model.fpn_channels=32",
]


def tiny_cfg(head, *overrides):
    resolution = 8 if head == "c4" else 7  # C4: res5 halves it, 4 x 4 (14 -> 7 by default)
    head_overrides = [f"model.head={head}", f"model.roi_heads.pooler_resolution={resolution}"]
    return load_config(DetectionConfig, None, [*head_overrides, *TINY, *overrides])


def tiny_model(head, *overrides, seed=0):
    torch.manual_seed(seed)
    return build_detector(tiny_cfg(head, *overrides), NUM_CLASSES)


def synthetic_batch():
    """Two images of different sizes, each with one bright rectangle on a dark background."""
    images, targets = [], []
    for (h, w), (x0, y0, x1, y1), label in [((64, 96), (16, 12, 56, 44), 1), ((80, 64), (8, 20, 40, 72), 2)]:
        image = torch.full((3, h, w), 30, dtype=torch.uint8)
        image[:, y0:y1, x0:x1] = 220
        images.append(image)
        boxes = torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32)
        targets.append({"boxes": boxes, "labels": torch.tensor([label])})
    return images, targets


@pytest.mark.parametrize("head", ["c4", "fpn"])
@pytest.mark.parametrize("pooler", ["roi_align", "roi_pool"])
def test_train_forward_returns_four_finite_losses(head, pooler):
    model = tiny_model(head, f"model.roi_heads.pooler={pooler}").train()
    assert isinstance(model.roi_heads.box_roi_pool, MultiScaleRoIPool) == (pooler == "roi_pool")
    losses = model(*synthetic_batch())
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("head", ["c4", "fpn"])
@pytest.mark.parametrize("pooler", ["roi_align", "roi_pool"])
def test_eval_returns_detections_inside_each_image(head, pooler):
    model = tiny_model(head, f"model.roi_heads.pooler={pooler}", "model.roi_heads.score_thresh=0.0").eval()
    images, _ = synthetic_batch()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == len(images)
    for image, out in zip(images, outputs):
        n = len(out["boxes"])
        assert 0 < n <= 100
        assert out["boxes"].shape == (n, 4) and out["labels"].shape == (n,) and out["scores"].shape == (n,)
        assert out["labels"].dtype == torch.int64
        assert out["labels"].min() >= 1 and out["labels"].max() <= NUM_CLASSES
        h, w = image.shape[1:]
        boxes = out["boxes"]
        assert boxes.min() >= 0 and boxes[:, 0::2].max() <= w and boxes[:, 1::2].max() <= h
        assert (boxes[:, 2:] >= boxes[:, :2]).all()


@pytest.mark.parametrize("head", ["c4", "fpn"])
def test_predictor_has_background_plus_k_outputs(head):
    model = tiny_model(head)
    assert model.roi_heads.box_predictor.cls_score.out_features == NUM_CLASSES + 1
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 4 * (NUM_CLASSES + 1)


def test_config_counts_and_thresholds_switch_with_train_and_eval():
    model = tiny_model(
        "fpn",
        "model.rpn.post_nms_topk_train=40",
        "model.rpn.post_nms_topk_test=9",
        "model.roi_heads.score_thresh=0.0",
        "model.roi_heads.detections_per_image=5",
    )
    proposal_counts = []
    model.rpn.register_forward_hook(lambda m, i, out: proposal_counts.append([len(p) for p in out[0]]))
    images, targets = synthetic_batch()
    model.train()(images, targets)
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    # FPN: the post-NMS count is per image (torchvision keeps the top-k over all levels).
    assert proposal_counts[0] == [40, 40] and proposal_counts[1] == [9, 9]
    assert all(0 < len(o["boxes"]) <= 5 for o in outputs)
    assert model.roi_heads.score_thresh == 0.0 and model.rpn.nms_thresh == 0.7


def seeded_total_loss(model, images, targets):
    """The training loss with the RPN's and RoI head's sampling fixed, so that two calls compare."""
    torch.manual_seed(123)
    with torch.no_grad():
        return sum(model(images, targets).values()).item()


@pytest.mark.parametrize("head", ["c4", "fpn"])
def test_sgd_reduces_the_loss_and_leaves_stem_res2_and_bn_statistics_alone(head):
    model = tiny_model(head, seed=1).train()
    body = model.backbone if head == "c4" else model.backbone.bottom_up
    assert not any(p.requires_grad for p in [*body.conv1.parameters(), *body.layer1.parameters()])
    assert all(p.requires_grad for p in body.layer2.parameters())
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    if head == "c4":
        assert any(isinstance(m, FrozenBatchNorm2d) for m in model.roi_heads.box_head.res5.modules())
    fixed = [*body.conv1.parameters(), *body.layer1.state_dict().values(), *(b for m in norms for b in m.buffers())]
    snapshot = [t.clone() for t in fixed]
    trained = body.layer2[0].conv1.weight.clone()

    images, targets = synthetic_batch()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9)
    before = seeded_total_loss(model, images, targets)
    for _ in range(10):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert math.isfinite(loss.item())
    after = seeded_total_loss(model, images, targets)
    assert after < 0.7 * before, (before, after)

    assert all(torch.equal(a, b) for a, b in zip(snapshot, fixed))
    assert not torch.equal(trained, body.layer2[0].conv1.weight)


def test_c4_head_is_the_backbones_loaded_layer4(tmp_path):
    torch.manual_seed(3)
    source = build_backbone("r18", weights=None, norm="frozen_bn", freeze_at=0)
    for tensor in source.state_dict().values():
        if tensor.is_floating_point():
            tensor.copy_(torch.randn_like(tensor).abs() + 0.1)
    weights = tmp_path / "r18.pth"
    torch.save(source.state_dict(), weights)
    saved = torch.load(weights)
    model = tiny_model("c4", f"model.backbone.weights={weights}")
    res5 = model.roi_heads.box_head.res5.state_dict()
    assert res5 and all(torch.equal(v, saved[f"layer4.{k}"]) for k, v in res5.items())
    assert all(torch.equal(v, saved[k]) for k, v in model.backbone.state_dict().items())
    assert not hasattr(model.backbone, "layer4")
    assert model.roi_heads.box_predictor.cls_score.in_features == source.output_shape()["c5"].channels


def test_multiscale_roi_pool_pools_each_box_on_its_fpn_level():
    torch.manual_seed(0)
    strides = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}
    features = {name: torch.randn(2, 3, 512 // s, 512 // s) for name, s in strides.items()}
    # sqrt(area) 20, 120, 240, 480 -> levels 2, 3, 4, 5 by FPN eq. 1 (224 on p4).
    boxes = torch.tensor([[4, 4, 24, 24], [10, 20, 130, 140], [0, 8, 240, 248], [16, 16, 496, 496]]).float()
    pooled = build_box_pooler("roi_pool", strides, 3, 0)(features, [boxes[:2], boxes[2:]], [(512, 512)] * 2)
    for i, ((name, stride), box) in enumerate(zip(strides.items(), boxes)):
        roi = torch.cat([torch.tensor([i // 2.0]), box])[None]  # (image index, box)
        assert torch.equal(pooled[i], roi_pool(features[name], roi, 3, 1 / stride)[0])


def test_anchors_one_list_serves_both_heads():
    c4 = tiny_model("c4").rpn.anchor_generator
    fpn = tiny_model("fpn").rpn.anchor_generator
    assert c4.sizes == ((32, 64, 128, 256, 512),) and c4.num_anchors_per_location() == [15]
    assert fpn.sizes == ((32,), (64,), (128,), (256,), (512,)) and fpn.num_anchors_per_location() == [3] * 5
    assert anchor_sizes([[32], [64], [128], [256], [512]], 1) == ((32, 64, 128, 256, 512),)
    assert anchor_sizes([[16, 24], [32, 48]], 2) == ((16, 24), (32, 48))
    with pytest.raises(ConfigError, match="model.anchors.sizes"):
        anchor_sizes([[32, 64, 128]], 5)
    with pytest.raises(ConfigError, match="model.anchors.sizes"):
        anchor_sizes([[0, 64]], 1)


@pytest.mark.parametrize(
    "override, key",
    [("model.head=c5", "model.head"), ("model.roi_heads.pooler=psroi", "model.roi_heads.pooler")],
)
def test_bad_head_or_pooler_is_a_config_error(override, key):
    with pytest.raises(ConfigError, match=key):
        build_detector(tiny_cfg("c4", override), NUM_CLASSES)


@pytest.mark.parametrize(
    "head, shapes",
    [
        ("c4", {"c4": ShapeSpec(256, 16)}),
        ("fpn", {f"p{level}": ShapeSpec(32, 2**level) for level in range(2, 7)}),
    ],
)
def test_the_features_report_their_shapes_and_the_detector_reads_them(head, shapes):
    model = tiny_model(head).eval()
    assert model.backbone.output_shape() == shapes
    # torchvision's FasterRCNN requires one int out_channels on what it receives: the RPN's input.
    assert model.backbone.out_channels == next(iter(shapes.values())).channels
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 128, 128))
    assert {name: (f.shape[1], 128 // f.shape[-1]) for name, f in features.items()} == {
        name: (shape.channels, shape.stride) for name, shape in shapes.items()
    }
    pooled = [name for name in shapes if name != "p6"]
    assert model.roi_heads.box_roi_pool.scales == [1 / shapes[name].stride for name in pooled]
