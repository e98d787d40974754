"""torchvision's detection weights in (resnet_det.modeling.torchvision_weights): the key mapping
both ways, the same detections as torchvision's own model on real photos, the class predictor
kept by name or re-initialised when fine-tuning, the forms ``--weights`` takes, and a fine-tune on
coco_mini from random weights saved in torchvision's format (which checks the path, not accuracy).
"""

import copy
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from backbones import BackboneError
from backbones.weights import TORCHVISION_INPUT
from resnet_det.config import DetectionConfig, load_config
from resnet_det.data.image_io import read_image
from resnet_det.data.transforms import resize_shortest_edge
from resnet_det.engine.predictor import load_detector
from resnet_det.errors import CheckpointError, ConfigError
from resnet_det.modeling import build_detector
from resnet_det.modeling import torchvision_weights as tvw

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # as conftest's shared_data
RECIPE = REPO / tvw.RECIPE
PHOTOS = ("000000000009.jpg", "000000000025.jpg")
SIZE = 256  # the photos' short side: small, to keep the r50 fast


def random_torchvision_detector() -> torch.nn.Module:
    """torchvision's own fasterrcnn_resnet50_fpn with seeded random weights that give distinct
    detections: BatchNorm's affine random and its statistics those of a photo, normalised by
    torchvision's transform (so activations keep
    their scale through 50 random layers), the RPN's and the classifier's layers wider than
    torchvision's initialisation (so that objectness and class scores differ)."""
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=SIZE, max_size=10 * SIZE)
    g = torch.Generator().manual_seed(1)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.momentum = None  # the statistics of the one batch below
            norm.weight.uniform_(0.5, 1.5, generator=g)
            norm.bias.normal_(0.0, 0.1, generator=g)
        photo = _photos(required=False)[0].float() / 255
        model.backbone.body.train()(model.transform([photo])[0].tensors)
        for layer in (model.rpn.head.cls_logits, model.rpn.head.bbox_pred):
            layer.weight.normal_(0.0, 0.05, generator=g)
        model.roi_heads.box_predictor.cls_score.weight.normal_(0.0, 0.1, generator=g)
    return model.eval()


@pytest.fixture(scope="module")
def tv_model():
    return random_torchvision_detector()


@pytest.fixture(scope="module")
def tv_file(tv_model, tmp_path_factory):
    """Those weights as a .pth state-dict file, as torchvision saves them."""
    path = tmp_path_factory.mktemp("tv") / "fasterrcnn_random.pth"
    torch.save(tv_model.state_dict(), path)
    return path


def recipe(*overrides):
    return load_config(DetectionConfig, RECIPE, ["model.weights=null", *overrides])


def legacy_names(state):
    """torchvision 0.5's names, as in its published COCO weights (fasterrcnn_resnet50_fpn_coco-258fb6c6.pth)."""
    out = {}
    for key, value in state.items():
        for block in ("inner_blocks", "layer_blocks"):
            key = key.replace(f"fpn.{block}.0.0.", f"fpn.{block}.0.").replace(f"fpn.{block}.1.0.", f"fpn.{block}.1.")
            key = key.replace(f"fpn.{block}.2.0.", f"fpn.{block}.2.").replace(f"fpn.{block}.3.0.", f"fpn.{block}.3.")
        out[key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")] = value
    return out


def test_keys_map_both_ways(tv_model):
    """All 348 keys of torchvision's state dict (today's names and 0.5's) load strictly into our
    R50-FPN, and ours map back to exactly torchvision's."""
    theirs = tv_model.state_dict()
    assert len(theirs) == 348
    ours = build_detector(recipe(), len(tvw.COCO_CATEGORIES))
    for state in (theirs, legacy_names(theirs)):
        converted = tvw.from_torchvision(state)
        assert set(converted) == set(ours.state_dict())  # in our names (load_state_dict would also rename 0.5's)
        ours.load_state_dict(converted, strict=True)
    back = tvw.to_torchvision(ours.state_dict())
    assert set(back) == set(theirs)
    weights = [key for key in theirs if not key.endswith("num_batches_tracked")]  # counters: bookkeeping
    assert len(weights) == 295 and all(torch.equal(back[key], theirs[key]) for key in weights)


def test_the_recipe_is_torchvisions_model():
    """configs/coco/faster_rcnn_fpn_torchvision.yaml sets what torchvision's builder sets."""
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    cfg = load_config(DetectionConfig, RECIPE)
    model, rpn, roi = cfg.model, tv.rpn, tv.roi_heads
    assert model.head == "fpn" and model.backbone.name == "r50" and model.backbone.freeze_at == 2
    anchors = tv.rpn.anchor_generator
    assert [tuple(s) for s in model.anchors.sizes] == list(anchors.sizes)
    assert tuple(model.anchors.aspect_ratios) == anchors.aspect_ratios[0]
    assert (model.rpn.pre_nms_topk_train, model.rpn.pre_nms_topk_test) == (
        rpn._pre_nms_top_n["training"],
        rpn._pre_nms_top_n["testing"],
    )
    assert (model.rpn.post_nms_topk_train, model.rpn.post_nms_topk_test) == (
        rpn._post_nms_top_n["training"],
        rpn._post_nms_top_n["testing"],
    )
    assert (model.rpn.nms_thresh, model.rpn.batch_size_per_image) == (
        rpn.nms_thresh,
        rpn.fg_bg_sampler.batch_size_per_image,
    )
    assert (model.rpn.fg_iou_thresh, model.rpn.bg_iou_thresh) == (
        rpn.proposal_matcher.high_threshold,
        rpn.proposal_matcher.low_threshold,
    )
    r = model.roi_heads
    assert (r.pooler_resolution, r.sampling_ratio) == (roi.box_roi_pool.output_size[0], roi.box_roi_pool.sampling_ratio)
    assert (r.score_thresh, r.nms_thresh, r.detections_per_image) == (
        roi.score_thresh,
        roi.nms_thresh,
        roi.detections_per_img,
    )
    assert (r.batch_size_per_image, r.positive_fraction) == (
        roi.fg_bg_sampler.batch_size_per_image,
        roi.fg_bg_sampler.positive_fraction,
    )
    assert (r.fg_iou_thresh, r.fc_dim) == (roi.proposal_matcher.high_threshold, tv.roi_heads.box_head.fc7.out_features)
    assert (cfg.input.min_size_test, cfg.input.max_size_test) == (tv.transform.min_size[0], tv.transform.max_size)
    assert cfg.input.size_divisibility == tv.transform.size_divisible


def _photos(required: bool = True):
    """The photos at their final size, uint8; without ../shared: skip, or (``required=False``) noise."""
    if not SHARED_DATA.is_dir():
        if required:
            pytest.skip(f"{SHARED_DATA} is absent: the real COCO mini photos live beside the project in CI")
        return [torch.randint(0, 256, (3, SIZE, SIZE + 64), dtype=torch.uint8)]
    images = []
    for name in PHOTOS:
        image, _ = resize_shortest_edge(read_image(SHARED_DATA / "coco_mini" / "images" / name), SIZE, 10 * SIZE)
        images.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    return images


def test_same_detections_as_torchvision_on_coco_photos(tv_model, tv_file, caplog):
    """Our detector built from the recipe with the converted weights (read from the .pth, all 91
    rows kept) gives torchvision's detections, score threshold 0 (100 per photo).

    In float64: in float32 the two normalisations (ours one multiply-add on 0..255, torchvision's a
    division by 255, a subtraction and a division) differ by a rounding (~5e-7), which 50 random
    layers amplify to ~1e-2 px and ~1e-4 in score, drowning the comparison. The images are given
    at their final size (torchvision's resize is then the identity, as ours never resizes).
    """
    images = _photos()
    weights = tvw.read_detector_weights(str(tv_file))
    assert weights.class_names == tvw.COCO_CATEGORIES and weights.num_classes == 90
    ours = build_detector(recipe("model.roi_heads.score_thresh=0.0"), weights.num_classes)
    with caplog.at_level(logging.INFO, logger=tvw.__name__):
        done = tvw.load_detector_weights(ours, weights, tvw.COCO_CATEGORIES)
    assert "kept the rows of 90 of 90 classes" in done and done in caplog.text
    assert ours.backbone_input_format == TORCHVISION_INPUT

    tv = copy.deepcopy(tv_model)
    tv.roi_heads.score_thresh = 0.0
    tv.eval().double()
    ours.eval().double()
    # the normalisation constants in float64 too (the transform's buffers were made in float32)
    std = torch.tensor(TORCHVISION_INPUT.pixel_std, dtype=torch.float64).view(3, 1, 1)
    mean = torch.tensor(TORCHVISION_INPUT.pixel_mean, dtype=torch.float64).view(3, 1, 1)
    ours.transform.scale, ours.transform.shift = 1.0 / std, -mean / std
    with torch.no_grad():
        expected = tv([image.double() / 255 for image in images])
        got = ours(images)
    for theirs, mine in zip(expected, got):
        assert len(theirs["boxes"]) == 100 and theirs["scores"].std() > 0.05  # distinct, not all alike
        assert torch.equal(mine["labels"], theirs["labels"])
        assert (mine["boxes"] - theirs["boxes"]).abs().max() < 0.01
        assert (mine["scores"] - theirs["scores"]).abs().max() < 1e-4


def _coco_named_state(seed: int) -> tvw.DetectorWeights:
    """A small detector (r18 FPN, for speed) with COCO's 90 classes, in torchvision's format and back."""
    torch.manual_seed(seed)
    model = build_detector(recipe("model.backbone.name=r18"), len(tvw.COCO_CATEGORIES))
    state = tvw.from_torchvision(tvw.to_torchvision(model.state_dict()))
    return tvw.DetectorWeights("coco.pth", state, tvw.COCO_CATEGORIES)


def _predictor(state, key="roi_heads.box_predictor.cls_score.weight"):
    return state[key]


def test_fine_tuning_keeps_the_rows_of_matching_class_names(caplog):
    weights = _coco_named_state(0)
    torch.manual_seed(1)
    model = build_detector(recipe("model.backbone.name=r18"), 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger=tvw.__name__):
        done = tvw.load_detector_weights(model, weights, ["dog", "Person", "unicorn"])
    assert "kept the rows of 2 of 3 classes" in done and "initialised the rows of the other 1 (unicorn)" in done
    assert done in caplog.text
    after, source = model.state_dict(), weights.state_dict
    for key in source:
        if not key.startswith(tvw.PREDICTOR):  # trunk, FPN, RPN, box head: as loaded
            assert torch.equal(after[key], source[key]), key
    dog, person = tvw.COCO_CATEGORIES.index("dog") + 1, tvw.COCO_CATEGORIES.index("person") + 1
    for kind, width in (("cls_score", 1), ("bbox_pred", 4)):
        for param in ("weight", "bias"):
            key = f"{tvw.PREDICTOR}{kind}.{param}"
            theirs = source[key].view(-1, width, *source[key].shape[1:])
            mine = after[key].view(-1, width, *after[key].shape[1:])
            init = before[key].view(-1, width, *before[key].shape[1:])
            assert torch.equal(mine[0], theirs[0]) and torch.equal(mine[1], theirs[dog])
            assert torch.equal(mine[2], theirs[person]) and torch.equal(mine[3], init[3]), key


def test_fine_tuning_reinitialises_the_predictor_when_no_name_matches(caplog):
    weights = _coco_named_state(0)
    torch.manual_seed(1)
    model = build_detector(recipe("model.backbone.name=r18"), 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger=tvw.__name__):
        done = tvw.load_detector_weights(model, weights, ["unicorn", "dragon"])
    assert "re-initialised for the 2 classes (no class name matches)" in done and done in caplog.text
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith(tvw.PREDICTOR))
    assert torch.equal(after["rpn.head.cls_logits.weight"], weights.state_dict["rpn.head.cls_logits.weight"])
    unnamed = tvw.DetectorWeights("own.pth", weights.state_dict, None)
    assert "its classes are not named" in tvw.load_detector_weights(model, unnamed, ["dog", "dragon"])


def test_weights_forms_and_their_errors(tv_file, tmp_path, monkeypatch):
    """torchvision:NAME through the torch.hub cache (offline: the error names file and folder), a
    .pth recognised by its keys; what --weights of train_det.py sets; the config they need."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    name = "torchvision:fasterrcnn_resnet50_fpn_coco"
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(BackboneError, match=r"fasterrcnn_resnet50_fpn_coco-258fb6c6\.pth not in .*hub/checkpoints"):
        tvw.read_detector_weights(name)
    (hub / "checkpoints").mkdir(parents=True, exist_ok=True)
    (hub / "checkpoints" / "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth").write_bytes(tv_file.read_bytes())
    cached = tvw.read_detector_weights(name)
    assert cached.class_names == tvw.COCO_CATEGORIES and "hub/checkpoints" in cached.source
    with pytest.raises(ConfigError, match="torchvision:fasterrcnn_resnet50_fpn_coco"):
        tvw.read_detector_weights("torchvision:maskrcnn")

    backbone = tmp_path / "r18.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, backbone)
    assert tvw.names_detector_weights(str(tv_file)) and tvw.names_detector_weights(name)
    assert not tvw.names_detector_weights(str(backbone)) and not tvw.names_detector_weights("imagenet")
    with pytest.raises(CheckpointError, match="not a torchvision Faster R-CNN state dict.*model.backbone.weights"):
        tvw.read_detector_weights(str(backbone))

    cfg = load_config(DetectionConfig, REPO / "configs/coco/faster_rcnn_fpn.yaml", tvw.weights_overrides(str(tv_file)))
    assert cfg.model.weights == str(tv_file) and cfg.model.backbone.weights is None
    assert cfg.model.backbone.stride_in_1x1 is False
    cfg = load_config(DetectionConfig, RECIPE, tvw.weights_overrides("imagenet"))
    assert cfg.model.weights is None and cfg.model.backbone.weights == "imagenet"
    cfg = load_config(DetectionConfig, RECIPE, tvw.weights_overrides("none"))
    assert cfg.model.weights is None and cfg.model.backbone.weights is None
    c4 = load_config(DetectionConfig, REPO / "configs/coco/faster_rcnn_c4.yaml", tvw.weights_overrides(name))
    with pytest.raises(
        ConfigError, match=r"needs model.backbone.name=r50, model.head=fpn.*not model.backbone.name=r101"
    ):
        build_detector(c4, 80)


def test_eval_and_infer_load_torchvision_weights_with_coco_classes(tv_model, tv_file):
    """eval.py / infer.py --config RECIPE --weights FILE: COCO's 80 classes, the predictor's rows
    those of their category ids (torchvision's labels), and the trunk as torchvision strides it."""
    loaded = load_detector(config=RECIPE, weights=tv_file)
    meta = loaded.meta
    assert meta["num_classes"] == 80 and meta["class_names"][:2] == ["person", "bicycle"]
    assert meta["label_to_category_id"][80] == 90 and meta["label_to_category_id"][12] == 13  # gaps kept
    assert loaded.cfg.model.backbone.stride_in_1x1 is False
    ids = [0, *(meta["label_to_category_id"][label] for label in range(1, 81))]
    theirs = tv_model.state_dict()["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(loaded.model.state_dict()["roi_heads.box_predictor.cls_score.weight"], theirs[ids])
    other = load_config(DetectionConfig, REPO / "configs/coco/faster_rcnn_fpn.yaml")
    assert other.model.backbone.stride_in_1x1 is None  # null there: the weights' meta sets it
    assert (
        load_detector(
            config=REPO / "configs/coco/faster_rcnn_fpn.yaml", weights=tv_file
        ).cfg.model.backbone.stride_in_1x1
        is False
    )


@pytest.mark.slow
def test_fine_tune_on_coco_mini_from_torchvision_format_weights(tv_file, tmp_path, shared_data, caplog):
    """train_det.py --weights <torchvision .pth> on coco_mini, tiny sizes: the loss is finite and falls,
    and the predictor keeps the rows of coco_mini's 80 classes. Random weights (no download here):
    this checks the path, not the accuracy."""
    spec = importlib.util.spec_from_file_location("train_det_tool", REPO / "tools" / "train_det.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    coco = shared_data / "coco_mini"
    out = tmp_path / "run"
    argv = [
        "--config", str(RECIPE), "--weights", str(tv_file),
        "--train-json", str(coco / "annotations.json"), "--train-images", str(coco / "images"),
        "--output", str(out), "--max-iter", "8", "--batch-size", "2", "--lr", "0.01", "--device", "cpu",
        "datasets.test=[]", "input.min_size_train=[128]", "input.max_size_train=160", "input.hflip_prob=0",
        "model.rpn.pre_nms_topk_train=200", "model.rpn.post_nms_topk_train=64",
        "model.roi_heads.batch_size_per_image=64", "dataloader.num_workers=0", "dataloader.aspect_ratio_grouping=false",
        "solver.warmup_iters=0", "train.log_period=1", "solver.clip_grad_norm=5.0",
    ]  # fmt: skip
    with caplog.at_level(logging.INFO):
        tool.main(argv)
    assert "kept the rows of 80 of 80 classes" in caplog.text
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    values = [r["total_loss"] for r in rows if "total_loss" in r]
    assert len(values) == 8 and all(np.isfinite(values))
    assert np.mean(values[-3:]) < np.mean(values[:3]), values
    saved = load_config(DetectionConfig, out / "config.yaml")
    assert saved.model.weights == str(tv_file) and saved.model.backbone.weights is None
