"""``datasets.corrupt_image=skip``: a test batch left empty gives no detections, not a crash, and the
training images skipped are counted in ``data_report.json`` like the other policies' records."""

import json
import logging
import uuid

import pytest
import torch
from data_fixtures import make_coco
from test_train_det import write_tiny_coco

from resnet_det.config import DetectionConfig, load_config
from resnet_det.data import get_dataset, register_coco_instances
from resnet_det.data.build import build_detection_test_loader, unreadable_files
from resnet_det.engine.inference import detect_on_records
from resnet_det.engine.train_detection import train_detector
from resnet_det.modeling import build_detector

TINY = [
    "model.backbone.name=r18",
    "model.backbone.weights=null",
    "model.fpn_channels=32",
    "model.roi_heads.fc_dim=64",
    "model.head=fpn",
    "model.roi_heads.pooler_resolution=7",
    "model.rpn.pre_nms_topk_train=200",
    "model.rpn.post_nms_topk_train=32",
    "model.roi_heads.batch_size_per_image=16",
    "model.rpn.pre_nms_topk_test=100",
    "model.rpn.post_nms_topk_test=20",
    "model.roi_heads.score_thresh=0.0",
    "input.min_size_train=[64]",
    "input.max_size_train=96",
    "input.min_size_test=64",
    "input.max_size_test=96",
    "train.device=cpu",
    "datasets.corrupt_image=skip",
]
NOT_AN_IMAGE = b"\x89PNG\r\n\x1a\n truncated"


@pytest.mark.parametrize("workers", [0, 2])
def test_a_test_batch_of_skipped_images_gives_no_detections_for_them(tmp_path, caplog, workers):
    """Images 1 and 2 (the first batch of two) do not decode: image 5 alone is detected on."""
    json_path, images_dir = make_coco(tmp_path)
    name = f"test_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, images_dir, json_path)
    cfg = load_config(DetectionConfig, None, [*TINY, "test.batch_size=2", f"dataloader.num_workers={workers}"])
    records, metadata = get_dataset(name, policy=cfg.datasets)
    for file in ("a.png", "b.png"):
        (images_dir / file).write_bytes(NOT_AN_IMAGE)
    batches = [len(images) for images, _ in build_detection_test_loader(cfg, records)]
    assert batches == [0, 1]
    torch.manual_seed(0)
    model = build_detector(cfg, len(metadata["class_names"]))
    with caplog.at_level(logging.WARNING, logger="resnet_det.engine.inference"):
        detections = detect_on_records(model, cfg, records, metadata, torch.device("cpu"), progress=False)
    assert detections and {d["image_id"] for d in detections} == {5}
    assert f"2 images of {name} could not be decoded and have no detections" in caplog.text
    assert str(images_dir / "a.png") in caplog.text and str(images_dir / "b.png") in caplog.text


def test_unreadable_files_are_seen_from_loader_workers(tmp_path):
    """The flags live in shared memory: images that worker processes failed to decode are known here."""
    json_path, images_dir = make_coco(tmp_path)
    name = f"test_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, images_dir, json_path)
    cfg = load_config(DetectionConfig, None, [*TINY, "test.batch_size=1", "dataloader.num_workers=2"])
    records, _ = get_dataset(name, policy=cfg.datasets)
    (images_dir / "c.png").write_bytes(NOT_AN_IMAGE)
    loader = build_detection_test_loader(cfg, records)
    assert unreadable_files([loader.dataset]) == []
    assert [info["image_id"] for _, infos in loader for info in infos] == [1, 2]
    assert unreadable_files([loader.dataset]) == [str(images_dir / "c.png")]


def test_skipped_training_images_are_counted_in_the_data_report(tmp_path):
    ann, images = write_tiny_coco(tmp_path / "data", n=4)
    files = sorted(images.iterdir())
    files[1].write_bytes(NOT_AN_IMAGE)
    out, name = tmp_path / "run", f"skipped_{uuid.uuid4().hex[:8]}"
    cfg = load_config(
        DetectionConfig,
        None,
        [
            *TINY,
            f"datasets.custom.{name}.images={images}",
            f"datasets.custom.{name}.annotations={ann}",
            f"datasets.train=[{name}]",
            "datasets.test=[]",
            "dataloader.num_workers=2",
            # One batch of the whole set: every image is read in the first iteration.
            "dataloader.aspect_ratio_grouping=false",
            "solver.batch_size=4",
            "solver.max_iter=1",
            "solver.steps=[]",
            "solver.warmup_iters=0",
            "train.log_period=1",
            f"train.output_dir={out}",
        ],
    )
    train_detector(cfg)
    report = json.loads((out / "data_report.json").read_text())
    assert report["counts"] == {"corrupt_image skipped": 1}
    assert report["examples"]["corrupt_image skipped"] == f"{files[1]}: cannot be decoded (corrupt or truncated file)"
