"""One Registry type, and extension without editing ours: a user's head, metric and dataset go
through the normal paths (load_config, build_detector, evaluate_detections, get_datasets)."""

import uuid

import pytest
import torch
from data_fixtures import detection_cfg, write_image
from torch import nn

from backbones import BackboneError, Registry
from resnet_det.config import DetectionConfig, load_config
from resnet_det.data.catalog import get_datasets, register_dataset
from resnet_det.errors import ConfigError, DatasetError, EvaluationError
from resnet_det.evaluation import METRICS, evaluate_detections
from resnet_det.modeling import HEADS, DetectionHead, build_detector


def _name(kind):
    return f"test_{kind}_{uuid.uuid4().hex[:8]}"  # registries live as long as the process


def test_registry_registers_by_call_or_decorator_and_lists_sorted():
    registry = Registry("widget")
    registry.register("b", 2)

    @registry.register("a")
    def make_a():
        return 1

    assert registry.get("a") is make_a and registry.get("b") == 2
    assert "a" in registry and "c" not in registry
    assert registry.names() == ["a", "b"] == list(registry) and len(registry) == 2
    with pytest.raises(BackboneError, match="widget name 'a' is already registered: choose another name"):
        registry.register("a", 3)


def test_unknown_name_is_one_line_with_the_close_matches_and_the_kind_s_error():
    registry = Registry("gadget", DatasetError, hint="register yours with GADGETS.register(name)")
    for name in ("sprocket", "spindle", "flywheel"):
        registry.register(name, object())
    with pytest.raises(DatasetError) as info:
        registry.get("sprockett")
    message = str(info.value)
    assert message == (
        "unknown gadget 'sprockett': known gadgets are flywheel, spindle, sprocket; did you mean sprocket?; "
        "register yours with GADGETS.register(name)"
    )
    assert "did you mean" not in str(registry.unknown("zzz"))


def _toy_head(model_cfg, make_backbone):
    """RPN and RoI pooling on c3 (stride 8), a one-layer box head: nothing of ours is edited."""
    backbone = make_backbone(("c3",))
    channels = backbone.output_shape()["c3"].channels
    resolution = model_cfg.roi_heads.pooler_resolution
    box_head = nn.Sequential(nn.Flatten(), nn.Linear(channels * resolution**2, 16), nn.ReLU())
    return DetectionHead(backbone, ("c3",), ("c3",), box_head, 16, backbone.input_format)


def test_a_users_head_is_built_through_the_config():
    name = _name("head")
    HEADS.register(name, _toy_head)
    cfg = load_config(
        DetectionConfig,
        None,
        [
            f"model.head={name}",
            "model.backbone.name=r18",
            "model.roi_heads.pooler_resolution=4",
            "model.rpn.pre_nms_topk_train=50",
            "model.rpn.post_nms_topk_train=16",
            "model.roi_heads.batch_size_per_image=8",
        ],
    )
    model = build_detector(cfg, num_classes=2)
    assert model.roi_heads.box_roi_pool.scales == [1 / 8]  # from the head's features' output_shape()
    assert model.rpn.head.conv[0][0].in_channels == 128  # r18's c3
    assert not hasattr(model.backbone, "layer3")  # only the stages up to c3 were built
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}
    losses = model.train()([image], [target])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(loss) for loss in losses.values())


def test_an_unknown_head_fails_when_the_config_loads_naming_the_close_match():
    name = _name("head")
    HEADS.register(name, _toy_head)
    with pytest.raises(ConfigError) as info:
        load_config(DetectionConfig, None, [f"model.head={name}x"])
    message = str(info.value)
    assert f"model.head='{name}x': unknown detection head '{name}x'" in message
    assert f"did you mean {name}" in message and "\n" not in message


def _records():
    records = [
        {
            "image_id": 1,
            "file_name": "a.png",
            "height": 20,
            "width": 20,
            "annotations": [{"bbox": [2.0, 2.0, 12.0, 12.0], "label": 1, "iscrowd": 0, "difficult": 0}],
        }
    ]
    metadata = {"name": "toy", "class_names": ["thing"], "label_to_category_id": {1: 1}}
    return records, metadata


def test_a_users_metric_is_chosen_by_name_in_the_config_and_scores():
    name = _name("metric")

    @METRICS.register(name)
    def count(detections, records, metadata, image_ids):
        return {"summary": {"detections_per_image": len(detections) / len(image_ids)}, "per_class": []}

    cfg = load_config(DetectionConfig, None, [f"test.metric={name}"])
    records, metadata = _records()
    detections = [{"image_id": 1, "category_id": 1, "bbox": [2.0, 2.0, 10.0, 10.0], "score": 0.9}] * 3
    report = evaluate_detections(detections, records, metadata, metric=cfg.test.metric)
    assert report["metric"] == name and report["summary"] == {"detections_per_image": 3.0}
    with pytest.raises(
        ConfigError, match=r"test.metric='voc12': unknown metric 'voc12': choose one of .*coco.*did you mean"
    ):
        load_config(DetectionConfig, None, ["test.metric=voc12"])
    with pytest.raises(EvaluationError, match="unknown metric 'voc12': choose one of"):
        evaluate_detections(detections, records, metadata, metric="voc12")


def test_a_users_dataset_is_read_by_name_from_the_config(tmp_path):
    name = _name("dataset")
    write_image(tmp_path / "a.png", 20, 20)

    def load_my_format(root, sanitizer):
        records, metadata = _records()
        records[0]["file_name"] = str(tmp_path / "a.png")
        return records, {"class_names": metadata["class_names"], "label_to_category_id": {1: 1}}

    register_dataset(name, load_my_format, evaluator="coco")
    cfg = detection_cfg(f"datasets.train=[{name}]")
    records, metadata = get_datasets(list(cfg.datasets.train), policy=cfg.datasets)
    assert [rec["image_id"] for rec in records] == [1] and metadata["name"] == name
    assert metadata["evaluator"] == "coco" and records[0]["annotations"][0]["label"] == 1
