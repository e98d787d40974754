"""Validation losses of a detector in the same pass as its detections (engine.val_loss): the
detections are those of the plain path, the losses those of the training forward with the same
seed, and neither training's random stream nor the model's modes change."""

import pytest
import torch
from test_train_det import write_tiny_coco

from resnet_det.config import DetectionConfig, load_config
from resnet_det.data import get_dataset, register_from_config
from resnet_det.data.build import build_detection_test_loader
from resnet_det.engine.inference import detect_on_records
from resnet_det.engine.val_loss import DetectionLossMeter
from resnet_det.modeling import build_detector

LOSSES = {"loss", "loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    ann, images = write_tiny_coco(tmp_path_factory.mktemp("tiny"), n=3)
    cfg = load_config(
        DetectionConfig,
        None,
        [
            "model.head=fpn",
            "model.backbone.name=r18",
            "model.backbone.weights=null",
            "model.backbone.norm=frozen_bn",
            "model.roi_heads.score_thresh=0.0",
            "model.rpn.pre_nms_topk_train=100",
            "model.rpn.post_nms_topk_train=40",
            "model.rpn.post_nms_topk_test=20",
            "model.roi_heads.batch_size_per_image=16",
            "input.min_size_test=64",
            "input.max_size_test=96",
            "test.batch_size=2",
            "dataloader.num_workers=0",
            f"datasets.custom.val_loss_tiny.images={images}",
            f"datasets.custom.val_loss_tiny.annotations={ann}",
            "datasets.train=[val_loss_tiny]",
            "datasets.test=[val_loss_tiny]",
        ],
    )
    register_from_config(cfg.datasets)
    records, metadata = get_dataset("val_loss_tiny", policy=cfg.datasets)
    torch.manual_seed(0)
    model = build_detector(cfg, len(metadata["class_names"])).eval()
    return cfg, model, records, metadata


def test_the_loss_path_leaves_the_detections_and_the_rng_unchanged(tiny):
    cfg, model, records, metadata = tiny
    plain = detect_on_records(model, cfg, records, metadata, torch.device("cpu"), progress=False)
    meter = DetectionLossMeter(model, records, seed=5)
    rng = torch.get_rng_state()
    with_losses = detect_on_records(model, cfg, records, metadata, torch.device("cpu"), progress=False, on_batch=meter)
    assert torch.equal(rng, torch.get_rng_state())
    assert plain and with_losses == plain
    assert not model.training and not model.rpn.training and not model.roi_heads.training

    losses = meter.result()
    assert set(losses) == LOSSES and meter.images == len(records) and meter.batches == 2
    assert all(torch.isfinite(torch.tensor(v)) and v > 0 for v in losses.values())
    assert losses["loss"] == pytest.approx(sum(v for k, v in losses.items() if k != "loss"))

    batches = list(build_detection_test_loader(cfg, records))
    again, other = DetectionLossMeter(model, records, seed=5), DetectionLossMeter(model, records, seed=6)
    for images, infos in batches:
        again(images, infos)
        other(images, infos)
    assert again.result() == losses  # seeded: the same sampling at every evaluation
    assert other.result() != losses


def test_the_losses_are_those_of_the_training_forward(tiny):
    """With frozen BN the training forward differs from ours only in the heads' sampling, which
    the same seed makes the same: the losses of the first batch must match."""
    cfg, model, records, metadata = tiny
    images, infos = next(iter(build_detection_test_loader(cfg, records)))
    meter = DetectionLossMeter(model, records, seed=5)
    meter(images, infos)
    by_id = {r["image_id"]: r for r in records}
    targets = []
    for info in infos:
        anns = [a for a in by_id[info["image_id"]]["annotations"] if not a["iscrowd"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32) * info["scale"]
        targets.append({"boxes": boxes, "labels": torch.tensor([a["label"] for a in anns])})
    model.train()
    try:
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(5 * 1_000_003)
            expected = model(images, targets)
    finally:
        model.eval()
    ours = meter.result()
    for key, value in expected.items():
        assert ours[key] == pytest.approx(float(value), rel=1e-5), key
