"""Our backbones inside detectron2: the registered builders, the configs that select them, our
weights forms, and detectron2's own DefaultTrainer on coco_mini with our R18-FPN."""

import json
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA

from backbones import build_model

REPO = Path(__file__).resolve().parents[1]
LAYER4 = "backbone.bottom_up.body.layer4.1.conv2.weight"


@pytest.fixture(scope="module")
def d2(detectron2_path):
    import resnet_det.integrations.detectron2 as integration

    return integration


def d2_cfg(d2, recipe="faster_rcnn_r50_fpn.yaml", **resnet_det):
    from detectron2.config import get_cfg

    cfg = d2.add_resnet_det_config(get_cfg())
    cfg.merge_from_file(str(REPO / "configs" / "detectron2" / recipe))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNET_DET.WEIGHTS = ""
    for key, value in resnet_det.items():
        setattr(cfg.MODEL.RESNET_DET, key.upper(), value)
    return cfg


def test_builders_are_registered_and_the_recipes_select_them(d2):
    from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY, build_model

    assert BACKBONE_REGISTRY.get("build_resnet_det_backbone") is d2.build_resnet_det_backbone
    assert BACKBONE_REGISTRY.get("build_resnet_det_fpn_backbone") is d2.build_resnet_det_fpn_backbone
    assert ROI_HEADS_REGISTRY.get("ResNetDetRes5ROIHeads") is d2.ResNetDetRes5ROIHeads
    fpn = build_model(d2_cfg(d2, NAME="r18"))
    assert isinstance(fpn.backbone.bottom_up, d2.ResNetDetBackbone)
    c4 = build_model(d2_cfg(d2, "faster_rcnn_r50_c4.yaml", NAME="r18"))
    assert isinstance(c4.backbone, d2.ResNetDetBackbone) and isinstance(c4.roi_heads, d2.ResNetDetRes5ROIHeads)
    assert c4.roi_heads.res5[0].conv1.in_channels == 256  # our r18's res5 (BasicBlocks), not a bottleneck


@pytest.mark.parametrize(
    "options, strides",
    [
        ({"NAME": "r18"}, None),
        ({"NAME": "plain34"}, None),
        ({"NAME": "r50", "SHORTCUT": "A", "STRIDE_IN_1X1": False}, (1, 2)),
        ({"NAME": "r34", "SHORTCUT": "C", "NORM": "gn"}, None),
        ({"NAME": "r152", "NORM": "bn"}, (2, 1)),
    ],
)
def test_backbones_keep_detectron2s_contract(d2, options, strides):
    """Features as output_shape() says, size_divisibility, and the model's options kept."""
    from detectron2.modeling import build_backbone

    fpn = build_backbone(d2_cfg(d2, **options))
    c4 = build_backbone(d2_cfg(d2, "faster_rcnn_r50_c4.yaml", **options))
    assert fpn.size_divisibility == 32 and c4.size_divisibility == 0
    x = torch.zeros(1, 3, 64, 96)
    for backbone in (fpn, c4):
        out = backbone(x)
        assert set(out) == set(backbone.output_shape())
        for name, shape in backbone.output_shape().items():
            assert out[name].shape[1:] == (shape.channels, -(-64 // shape.stride), -(-96 // shape.stride))
    assert list(c4.output_shape()) == ["res4"] and c4.output_shape()["res4"].stride == 16
    assert list(fpn.output_shape()) == ["p2", "p3", "p4", "p5", "p6"]
    body = c4.body
    block = body.layer2[0]
    assert body.arch == options["NAME"]
    shortcut = type(block.downsample).__name__ if block.downsample is not None else None
    expected = {"A": "ZeroPadShortcut"}.get(options.get("SHORTCUT"), "Sequential")
    assert shortcut == (None if options["NAME"].startswith("plain") else expected)
    if options.get("SHORTCUT") == "C":
        assert body.layer2[1].downsample is not None  # projections on every block
    if strides:
        assert (block.conv1.stride[0], block.conv2.stride[0]) == strides
    norm = {"gn": torch.nn.GroupNorm, "bn": torch.nn.BatchNorm2d}.get(options.get("NORM"))
    if norm is not None:
        assert isinstance(body.layer3[0].bn1, norm)


def test_freeze_at(d2):
    from detectron2.modeling import build_backbone

    for freeze_at, trained in ((0, "conv1"), (3, "layer3"), (5, None)):
        cfg = d2_cfg(d2, "faster_rcnn_r50_c4.yaml", NAME="r18")
        cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
        names = [n for n, p in build_backbone(cfg).named_parameters() if p.requires_grad]
        assert names[0].startswith(f"body.{trained}") if trained else names == [], (freeze_at, names[:2])


def test_our_weights_forms_load(d2, tmp_path):
    """A torchvision state dict and a classification checkpoint of ours give the backbone their weights."""
    from detectron2.modeling import build_backbone

    classifier = build_model("r18", num_classes=10)
    torchvision_file = tmp_path / "r18.pth"
    torch.save(build_model("r18").state_dict(), torchvision_file)
    ours = tmp_path / "cls.pth"
    meta = {"kind": "classification", "arch": "r18", "num_classes": 10, "options": {"stride_in_1x1": True}}
    torch.save({"model": classifier.state_dict(), "meta": meta}, ours)
    for path, source in ((torchvision_file, None), (ours, classifier)):
        cfg = d2_cfg(d2, NAME="r18", WEIGHTS=str(path))
        backbone = build_backbone(cfg)
        expected = source.state_dict() if source is not None else torch.load(path, weights_only=True)
        got = backbone.bottom_up.body.state_dict()
        assert torch.equal(got["layer3.1.conv2.weight"], expected["layer3.1.conv2.weight"])
        assert torch.equal(got["bn1.running_var"], expected["bn1.running_var"])


def test_default_trainer_trains_our_r18_fpn_on_coco_mini(d2, tmp_path):
    """detectron2's DefaultTrainer, its data loader on coco_mini (register_coco_instances), a few
    iterations with finite losses; DetectionCheckpointer saves the model and loads it back."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: the real COCO mini data lives beside the project in CI")
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.engine import DefaultTrainer
    from detectron2.modeling import build_model as d2_build_model

    name = "resnet_det_coco_mini"
    if name not in DatasetCatalog.list():
        coco = SHARED_DATA / "coco_mini"
        register_coco_instances(name, {}, str(coco / "annotations.json"), str(coco / "images"))
    cfg = d2_cfg(d2, NAME="r18")
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (name,), ()
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (96,), 128
    cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32, 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN, cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64, 32
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER = 2, 0.001, 3
    cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.CHECKPOINT_PERIOD = (), 0, 1000
    cfg.OUTPUT_DIR = str(tmp_path)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    before = trainer.model.state_dict()[LAYER4].clone()
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    losses = [r["total_loss"] for r in records if "total_loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"} <= set(records[-1])

    trained = trainer.model.state_dict()
    DetectionCheckpointer(trainer.model, save_dir=str(tmp_path)).save("resnet_det_r18_fpn")
    fresh = d2_build_model(cfg)
    DetectionCheckpointer(fresh).load(str(tmp_path / "resnet_det_r18_fpn.pth"))
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert not torch.equal(trained[LAYER4], before), "training did not move our backbone's res5"
