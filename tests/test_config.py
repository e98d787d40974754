"""The config system: schema defaults, _base_ inheritance, overrides and their errors."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from resnet_det.config import ClassificationConfig, DetectionConfig, config_hash, load_config, save_config
from resnet_det.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _recipes(folder_glob):
    """Our recipes: not the bases, nor configs/detectron2 (detectron2's own yacs configs, selecting
    our backbones; tests/test_detectron2_integration.py loads them)."""
    return sorted(p for p in CONFIGS.glob(folder_glob) if p.parent.name not in ("base", "detectron2"))


_PAPER_SGD = {"solver.momentum": 0.9, "solver.weight_decay": 1e-4}
_CIFAR = {
    **_PAPER_SGD,
    "model.shortcut": "A",
    "data.dataset": "cifar10",
    "input.augment": "cifar",
    "input.crop_size": 32,
    "input.mean_subtraction": "per_pixel",
    "input.pixel_std": [1.0, 1.0, 1.0],
    "solver.base_lr": 0.1,
    "solver.batch_size": 128,
    "solver.reference_batch_size": 128,
    "solver.max_iter": 64000,
    "solver.steps": [32000, 48000],
    "solver.gamma": 0.1,
    "solver.lr_policy": "steps",
}
_IMAGENET = {
    **_PAPER_SGD,
    "model.name": "r50",
    "data.dataset": "imagenet",
    "input.augment": "imagenet",
    "input.scale_range": [256, 480],
    "input.crop_size": 224,
    "solver.base_lr": 0.1,
    "solver.batch_size": 256,
    "solver.reference_batch_size": 256,
    "solver.warmup_iters": 0,
}
_C4 = {
    "model.head": "c4",
    "model.backbone.name": "r101",
    "model.backbone.norm": "frozen_bn",
    "model.rpn.post_nms_topk_test": 300,
    "input.min_size_train": [600],
    "input.min_size_test": 600,
    "solver.momentum": 0.9,
}
_C4_DETECTRON2 = {
    **_C4,
    "model.roi_heads.pooler": "roi_align",
    "model.backbone.weights": "imagenet",
    "model.backbone.stride_in_1x1": None,
}
_C4_PAPER = {
    **_C4,
    "model.roi_heads.pooler": "roi_pool",
    "model.roi_heads.pooler_resolution": 14,
    "model.backbone.weights": "pretrained/R-101.pkl",
    "model.backbone.stride_in_1x1": True,
    "solver.warmup_iters": 0,
}
_COCO_PAPER_SCHEDULE = {
    "datasets.train": ["coco_2017_train"],
    "test.metric": "coco",
    "solver.base_lr": 0.001,
    "solver.batch_size": 8,
    "solver.max_iter": 320000,
    "solver.steps": [240000],
}
_VOC_PAPER_SCHEDULE = {
    "datasets.train": ["voc_0712_trainval"],
    "datasets.test": ["voc_2007_test"],
    "test.metric": "voc07",
    "solver.base_lr": 0.001,
    "solver.batch_size": 1,
    "solver.max_iter": 80000,
    "solver.steps": [60000],
    "solver.warmup_iters": 0,
}
_FPN = {"model.head": "fpn", "model.roi_heads.pooler": "roi_align", "model.roi_heads.pooler_resolution": 7}

# What each recipe promises (its comment): the values that make it the paper's, or another's.
RECIPE_VALUES = {
    "classification/cifar10_resnet.yaml": {
        **_CIFAR,
        "model.name": "cifar_r20",
        "solver.warmup_iters": 0,
        "solver.warmup_until_error": None,
    },
    # Section 4.2: lr 0.01 until the training error is below 80%: a rule, not 400 iterations.
    "classification/cifar10_r110.yaml": {
        **_CIFAR,
        "model.name": "cifar_r110",
        "solver.warmup_iters": 0,
        "solver.warmup_until_error": 80.0,
        "solver.warmup_factor": 0.1,
        "solver.warmup_method": "constant",
    },
    # Section 3.4: /10 on a plateau of the error, up to 60x10^4 iterations, per-pixel mean,
    # AlexNet's colour augmentation only.
    "classification/imagenet_r50.yaml": {
        **_IMAGENET,
        "solver.lr_policy": "plateau",
        "solver.steps": [],
        "solver.max_iter": 600000,
        "solver.epochs": None,
        "solver.gamma": 0.1,
        "input.mean_subtraction": "per_pixel",
        "input.pixel_std": [1.0, 1.0, 1.0],
        "input.color_jitter": 0.0,
        "train.eval_period": 5000,
    },
    "classification/imagenet_r50_torchvision.yaml": {
        **_IMAGENET,
        "solver.lr_policy": "steps",
        "solver.epochs": 90,
        "solver.step_epochs": [30, 60],
        "input.mean_subtraction": "per_channel",
        "input.color_jitter": 0.4,
    },
    "classification/shapes.yaml": {
        "model.name": "r18",
        "data.dataset": "shapes",
        "input.crop_size": 48,
        "input.scale_range": [48, 60],
        "solver.base_lr": 0.1,
        "solver.reference_batch_size": 256,
        "solver.batch_size": 64,
        "solver.max_iter": 600,
        "solver.steps": [450, 550],
        "solver.warmup_iters": 50,
        "solver.warmup_method": "linear",
    },
    "coco/faster_rcnn_c4.yaml": {**_C4_DETECTRON2, **_COCO_PAPER_SCHEDULE, "solver.warmup_iters": 1000},
    "coco/faster_rcnn_c4_paper.yaml": {**_C4_PAPER, **_COCO_PAPER_SCHEDULE},
    "coco/faster_rcnn_fpn.yaml": {
        **_FPN,
        "model.backbone.name": "r50",
        "solver.base_lr": 0.02,
        "solver.batch_size": 16,
        "solver.max_iter": 90000,
        "solver.steps": [60000, 80000],
        "solver.warmup_iters": 1000,
        "input.min_size_train": [800],
    },
    # torchvision's fasterrcnn_resnet50_fpn from its COCO weights (tests/test_torchvision_weights.py
    # compares these with torchvision's own model).
    "coco/faster_rcnn_fpn_torchvision.yaml": {
        **_FPN,
        "model.weights": "torchvision:fasterrcnn_resnet50_fpn_coco",
        "model.backbone.name": "r50",
        "model.backbone.weights": None,
        "model.backbone.stride_in_1x1": False,
        "model.rpn.post_nms_topk_train": 2000,
        "model.rpn.post_nms_topk_test": 1000,
        "model.roi_heads.sampling_ratio": 2,
        "input.min_size_test": 800,
        "input.max_size_test": 1333,
    },
    "voc/faster_rcnn_c4.yaml": {**_C4_DETECTRON2, **_VOC_PAPER_SCHEDULE},
    "voc/faster_rcnn_c4_paper.yaml": {**_C4_PAPER, **_VOC_PAPER_SCHEDULE},
    "voc/faster_rcnn_fpn.yaml": {
        **_FPN,
        "solver.base_lr": 0.02,
        "solver.batch_size": 16,
        "solver.max_iter": 18000,
        "solver.steps": [12000, 16000],
        "input.min_size_train": list(range(480, 801, 32)),
    },
    "shapes/faster_rcnn_c4.yaml": {
        "model.head": "c4",
        "model.backbone.name": "r18",
        "model.backbone.weights": "output/shapes_cls/model_final.pth",
        "solver.base_lr": 0.01,
        "solver.batch_size": 8,
        "solver.reference_batch_size": 8,
        "solver.max_iter": 300,
        "solver.warmup_iters": 50,
        "solver.clip_grad_norm": 10.0,
    },
    "shapes/faster_rcnn_fpn.yaml": {
        "model.head": "fpn",
        "model.backbone.name": "r18",
        "model.backbone.weights": "output/shapes_cls/model_final.pth",
        "solver.base_lr": 0.01,
        "solver.batch_size": 8,
        "solver.reference_batch_size": 8,
        "solver.max_iter": 300,
        "solver.warmup_iters": 50,
        "solver.clip_grad_norm": 10.0,
    },
}


def _name(path):
    return f"{path.parent.name}/{path.name}"


def test_every_recipe_states_its_values():
    assert sorted(map(_name, _recipes("*/*.yaml"))) == sorted(RECIPE_VALUES)


@pytest.mark.parametrize("name", sorted(RECIPE_VALUES))
def test_recipe_values(name):
    schema = ClassificationConfig if name.startswith("classification/") else DetectionConfig
    cfg = load_config(schema, CONFIGS / name)
    actual = {key: OmegaConf.select(cfg, key) for key in RECIPE_VALUES[name]}
    actual = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in actual.items()}
    assert actual == RECIPE_VALUES[name]


def test_the_paper_c4_recipe_builds_roi_pooling_and_stride_in_the_1x1():
    from torchvision.ops import MultiScaleRoIAlign

    from resnet_det.modeling import build_detector
    from resnet_det.modeling.detector import MultiScaleRoIPool

    paper = load_config(
        DetectionConfig,
        CONFIGS / "coco/faster_rcnn_c4_paper.yaml",
        ["model.backbone.weights=null", "model.backbone.name=r50"],
    )
    model = build_detector(paper, num_classes=3)
    assert isinstance(model.roi_heads.box_roi_pool, MultiScaleRoIPool)
    assert model.roi_heads.box_roi_pool.output_size == (14, 14)
    assert model.backbone.layer3[0].conv1.stride == (2, 2) and model.backbone.layer3[0].conv2.stride == (1, 1)
    detectron2 = load_config(
        DetectionConfig,
        CONFIGS / "coco/faster_rcnn_c4.yaml",
        ["model.backbone.weights=null", "model.backbone.name=r50"],
    )
    pool = build_detector(detectron2, num_classes=3).roi_heads.box_roi_pool
    assert type(pool) is MultiScaleRoIAlign


def test_paper_coco_recipe_inherits_the_c4_base():
    cfg = load_config(DetectionConfig, CONFIGS / "coco/faster_rcnn_c4.yaml")
    assert cfg.model.head == "c4"
    assert cfg.model.backbone.name == "r101"
    assert cfg.model.rpn.post_nms_topk_test == 300
    assert list(cfg.input.min_size_train) == [600]
    assert cfg.solver.base_lr == 0.001 and list(cfg.solver.steps) == [240000] and cfg.solver.max_iter == 320000
    assert list(cfg.datasets.train) == ["coco_2017_train"]


def test_later_files_and_overrides_win(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("solver:\n  base_lr: 0.5\n  max_iter: 10\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\nsolver:\n  max_iter: 20\n")
    cfg = load_config(DetectionConfig, child, ["solver.batch_size=3", "input.min_size_train=[32,48]"])
    assert cfg.solver.base_lr == 0.5
    assert cfg.solver.max_iter == 20
    assert cfg.solver.batch_size == 3
    assert list(cfg.input.min_size_train) == [32, 48]


def test_unknown_key_in_file_names_the_key_and_a_close_match(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("solver:\n  base_rl: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*base_rl.*did you mean solver.base_lr"):
        load_config(DetectionConfig, bad)


def test_unknown_override_key_lists_close_matches():
    with pytest.raises(ConfigError, match=r"'solver.max_itr' does not exist; did you mean solver.max_iter"):
        load_config(DetectionConfig, None, ["solver.max_itr=5"])


def test_wrong_type_and_malformed_override():
    with pytest.raises(ConfigError, match="solver.max_iter"):
        load_config(DetectionConfig, None, ["solver.max_iter=many"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(DetectionConfig, None, ["solver.max_iter"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(DetectionConfig, tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("solver:\n  base_lr: [0.1\n")
    with pytest.raises(ConfigError, match=r"broken.yaml line \d+: not valid YAML"):
        load_config(DetectionConfig, broken)


def test_base_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(DetectionConfig, tmp_path / "a.yaml")


def test_custom_datasets_are_free_form_and_checked():
    cfg = load_config(
        DetectionConfig,
        None,
        ["datasets.custom.mine.images=/data/img", "datasets.custom.mine.annotations=/data/a.json"],
    )
    assert cfg.datasets.custom.mine.images == "/data/img"
    with pytest.raises(ConfigError, match="annotations"):
        load_config(DetectionConfig, None, ["datasets.custom.mine.images=/data/img"])


def test_saved_config_round_trips_and_hash_is_stable(tmp_path):
    cfg = load_config(ClassificationConfig, None, ["model.name=cifar_r56"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(ClassificationConfig, tmp_path / "config.yaml")
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(ClassificationConfig, None, ["model.name=cifar_r20"])) != config_hash(cfg)
