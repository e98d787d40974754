"""detectron2's Faster R-CNN in and out: a model zoo checkpoint becomes a run folder whose detector
gives detectron2's own detections on a real photo, and a run folder goes back to detectron2.

detectron2's model (its zoo configs, R50, C4 and FPN) gets seeded random weights (no download is
possible); both detectors see the same input tensor, with score threshold 0 so every class counts.
Detections are compared one to one: same label, box within 0.01 px, score within 1e-4 (proposals
that clip to the same sliver of the border score exactly alike, and their order among themselves
is arbitrary in both libraries). Each option that detectron2 needs has its own test below.
"""

import pickle
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import SHARED_DATA
from PIL import Image

from resnet_det.config import DetectionConfig, load_config
from resnet_det.engine.predictor import load_detector
from resnet_det.modeling import build_detector

TOOL = Path(__file__).resolve().parents[1] / "tools" / "convert_weights.py"
ZOO = {
    "fpn": "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "c4": "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml",
}
# Not multiples of 64: FPN's p6 (stride 64) then has a partial cell, where torchvision's inferred
# anchor stride would differ from detectron2's.
HEIGHT, WIDTH = 160, 224


def main(argv):
    """tools/convert_weights.py's main, in this process."""
    return runpy.run_path(str(TOOL), run_name="convert_weights")["main"](argv)


def zoo_config(detectron2_path, head):
    return detectron2_path / "detectron2" / "model_zoo" / "configs" / ZOO[head]


def randomize(model, seed=0):
    """Seeded weights throughout: detectron2's init, plus frozen-BN statistics and RPN and
    predictor weights large enough to rank boxes and classes apart."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if type(module).__name__ == "FrozenBatchNorm2d":
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) * 0.5 + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
        for name, param in model.named_parameters():
            if "box_predictor" in name or "rpn_head" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.01)


def photo(shared_data):
    path = sorted((shared_data / "coco_mini" / "images").glob("*.jpg"))[0]
    image = Image.open(path).convert("RGB").resize((WIDTH, HEIGHT), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def d2_detections(model, image):
    """detectron2's detections on ``image`` (RGB uint8), fed as its BGR float input."""
    with torch.no_grad():
        out = model.inference([{"image": image.flip(0).float()}], do_postprocess=False)[0]
    return out.pred_boxes.tensor, out.scores, out.pred_classes + 1  # our labels: background is 0


def assert_same_detections(theirs, ours):
    boxes, scores, labels = theirs
    assert len(boxes) == len(ours["boxes"]) > 50
    unused = list(range(len(ours["boxes"])))
    for box, score, label in zip(boxes, scores, labels):
        match = [
            j
            for j in unused
            if ours["labels"][j] == label
            and abs(float(ours["scores"][j] - score)) <= 1e-4
            and float((ours["boxes"][j] - box).abs().max()) <= 0.01
        ]
        assert match, f"detectron2's detection {box.tolist()} {float(score):.6f} label {int(label)} has no match"
        unused.remove(match[0])


@pytest.fixture(scope="module", params=["fpn", "c4"])
def converted(request, detectron2_path, tmp_path_factory):
    """detectron2's zoo model with random weights, saved as the zoo does, and its converted run."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    head = request.param
    tmp = tmp_path_factory.mktemp(f"d2_{head}")
    config = tmp / "config.yaml"
    # Score threshold 0 (every class competes); 100 proposals keep the test fast.
    overrides = {
        "MODEL": {"DEVICE": "cpu", "ROI_HEADS": {"SCORE_THRESH_TEST": 0.0}, "RPN": {"POST_NMS_TOPK_TEST": 100}}
    }
    config.write_text(yaml.safe_dump({"_BASE_": str(zoo_config(detectron2_path, head)), **overrides}))
    cfg = get_cfg()
    cfg.merge_from_file(str(config))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    randomize(model)
    checkpoint = tmp / "model_final_random.pkl"
    arrays = {k: v.numpy() for k, v in model.state_dict().items()}
    checkpoint.write_bytes(pickle.dumps({"model": arrays, "__author__": "test"}))
    main(["--from", "detectron2", "--config", str(config), str(checkpoint), "--output", str(tmp / "run")])
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: the real COCO mini photos live beside the project in CI")
    image = photo(SHARED_DATA)
    return {"head": head, "model": model, "cfg": cfg, "run": tmp / "run", "tmp": tmp, "image": image}


def test_zoo_checkpoint_gives_detectron2s_detections(converted):
    loaded = load_detector(run=converted["run"])
    assert loaded.meta["class_names"][0] == "person" and loaded.meta["label_to_category_id"][80] == 90
    with torch.no_grad():
        ours = loaded.model([converted["image"]])[0]
    assert_same_detections(d2_detections(converted["model"], converted["image"]), ours)


def test_converted_config_has_detectron2s_settings(converted):
    cfg = load_detector(run=converted["run"]).cfg
    fmt, roi = cfg.model.input_format, cfg.model.roi_heads
    assert fmt.channel_order == "BGR" and list(fmt.pixel_std) == [1.0, 1.0, 1.0]
    assert cfg.model.backbone.stride_in_1x1 is True and roi.pooler_aligned is True
    assert cfg.model.anchors.round is False and cfg.model.anchors.nominal_strides is True
    assert roi.pooler_resolution == (14 if converted["head"] == "c4" else 7)
    assert list(roi.box_reg_weights) == [10.0, 10.0, 5.0, 5.0] and cfg.model.rpn.post_nms_topk_test == 100


# What decides detections in detectron2's config: the export must give the original's values.
INFERENCE_KEYS = [
    "INPUT.FORMAT",
    "MODEL.PIXEL_MEAN",
    "MODEL.PIXEL_STD",
    "MODEL.BACKBONE.NAME",
    "MODEL.RESNETS.DEPTH",
    "MODEL.RESNETS.STRIDE_IN_1X1",
    "MODEL.RESNETS.NORM",
    "MODEL.RESNETS.OUT_FEATURES",
    "MODEL.FPN.OUT_CHANNELS",
    "MODEL.ANCHOR_GENERATOR",
    "MODEL.RPN",
    "MODEL.ROI_HEADS",
    "MODEL.ROI_BOX_HEAD.NAME",
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE",
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION",
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO",
    "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "MODEL.ROI_BOX_HEAD.NUM_FC",
    "TEST.DETECTIONS_PER_IMAGE",
]


def _get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_run_goes_back_to_detectron2(converted):
    """--to detectron2: the exported config sets what the original's did, DetectionCheckpointer
    loads the export into its model with the original's weights, and (FPN; C4 follows from the
    same weights and settings) that model gives our detections."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    out = converted["tmp"] / "export"
    main(["--to", "detectron2", "--run", str(converted["run"]), "--output", str(out)])
    cfg = get_cfg()
    cfg.merge_from_file(str(out / "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    for key in INFERENCE_KEYS:
        exported, original = _get(cfg, key), _get(converted["cfg"], key)
        if key in ("MODEL.RPN", "MODEL.ROI_HEADS"):  # training-only and unused keys aside
            exported = {
                k: v
                for k, v in exported.items()
                if k
                not in (
                    "BOUNDARY_THRESH",
                    "IOU_LABELS",
                    "LOSS_WEIGHT",
                    "BBOX_REG_LOSS_TYPE",
                    "BBOX_REG_LOSS_WEIGHT",
                    "SMOOTH_L1_BETA",
                    "PROPOSAL_APPEND_GT",
                )
            }
            original = {k: original[k] for k in exported}
        assert exported == original, key
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    original = converted["model"].state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, original[key]), key
    if converted["head"] == "fpn":
        with torch.no_grad():
            ours = load_detector(run=converted["run"]).model([converted["image"]])[0]
        assert_same_detections(d2_detections(model, converted["image"]), ours)


def test_bad_checkpoint_is_one_line(converted, capsys):
    bad = converted["tmp"] / "other.pkl"
    bad.write_bytes(pickle.dumps({"model": {"head.weight": np.zeros(3, np.float32)}, "__author__": "x"}))
    config = str(converted["tmp"] / "config.yaml")
    with pytest.raises(SystemExit) as stop:
        main(["--from", "detectron2", "--config", config, str(bad), "--output", str(converted["tmp"] / "bad")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "head.weight" in err and "Faster R-CNN does not have" in err


def test_without_detectron2_one_line(monkeypatch, tmp_path, capsys):
    """No detectron2: the tool and the integration say so in one line, with the install command."""
    from resnet_det.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "detectron2", None)
    monkeypatch.delitem(sys.modules, "resnet_det.integrations.detectron2", raising=False)
    with pytest.raises(SystemExit):
        main(["--from", "detectron2", "--config", "x.yaml", "x.pkl", "--output", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(
        "error: --from detectron2 needs detectron2, which is not installed: pip install 'git+https://github.com/facebookresearch/detectron2.git'"
    )
    with pytest.raises(MissingDependencyError, match="facebookresearch/detectron2.git"):
        import resnet_det.integrations.detectron2  # noqa: F401


# ---- each option that detectron2's detector needs ------------------------------------------


def tiny_cfg(head, *overrides):
    return load_config(
        DetectionConfig,
        None,
        [
            f"model.head={head}",
            "model.backbone.name=r18",
            "model.fpn_channels=32",
            "model.roi_heads.fc_dim=32",
            *overrides,
        ],
    )


def test_anchor_round_and_nominal_strides_give_detectron2s_anchors(detectron2_path):
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec as D2ShapeSpec
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    sizes = [[32], [64], [128], [256], [512]]
    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = sizes
    theirs = DefaultAnchorGenerator(cfg, [D2ShapeSpec(stride=s) for s in (4, 8, 16, 32, 64)])
    maps = [torch.zeros(1, 1, -(-HEIGHT // s), -(-WIDTH // s)) for s in (4, 8, 16, 32, 64)]
    expected = torch.cat([b.tensor for b in theirs(maps)])
    images = ImageList(torch.zeros(1, 3, HEIGHT, WIDTH), [(HEIGHT, WIDTH)])

    def anchors(*overrides):
        model = build_detector(tiny_cfg("fpn", f"model.anchors.sizes={sizes}", *overrides), 3)
        return model.rpn.anchor_generator(images, maps)[0]

    assert torch.equal(anchors("model.anchors.round=false", "model.anchors.nominal_strides=true"), expected)
    rounded = anchors("model.anchors.nominal_strides=true")
    assert torch.equal(rounded, rounded.round()) and not torch.equal(rounded, expected)
    inferred = anchors("model.anchors.round=false")  # p6: 160 // 3 = 53 px apart, not 64
    assert torch.equal(inferred[:-60], expected[:-60]) and not torch.equal(inferred, expected)


def test_c4_anchor_order_is_mapped(detectron2_path):
    """Several sizes on one map: detectron2 orders a location's anchors size-major, torchvision
    ratio-major; the RPN's outputs are reordered so each weight keeps its anchor."""
    from resnet_det.integrations.detectron2_weights import detectron2_to_ours, ours_to_detectron2

    sizes, ratios = 5, 3
    d2_cell = [(s, r) for s in range(sizes) for r in range(ratios)]
    ours_cell = [(s, r) for r in range(ratios) for s in range(sizes)]
    logits = torch.arange(15.0)
    state = {
        "proposal_generator.rpn_head.objectness_logits.bias": logits,
        "proposal_generator.rpn_head.anchor_deltas.bias": torch.arange(60.0),
        "roi_heads.box_predictor.cls_score.weight": torch.zeros(3, 2),
        "roi_heads.box_predictor.cls_score.bias": torch.tensor([1.0, 2.0, 0.0]),
        "roi_heads.box_predictor.bbox_pred.weight": torch.ones(8, 2),
        "roi_heads.box_predictor.bbox_pred.bias": torch.ones(8),
    }
    ours = detectron2_to_ours(state, "c4", sizes, ratios, "test")
    for index, anchor in enumerate(ours_cell):
        assert ours["rpn.head.cls_logits.bias"][index] == d2_cell.index(anchor)
        assert ours["rpn.head.bbox_pred.bias"][4 * index] == 4 * d2_cell.index(anchor)
    assert ours["roi_heads.box_predictor.cls_score.bias"].tolist() == [0.0, 1.0, 2.0]  # background first
    assert ours["roi_heads.box_predictor.bbox_pred.bias"].tolist() == [0.0] * 4 + [1.0] * 8
    back = ours_to_detectron2(ours, "c4", sizes, ratios)
    assert all(torch.equal(back[k], v) for k, v in state.items())


@pytest.mark.parametrize("head", ["fpn", "c4"])
def test_pooler_aligned_is_roialignv2(detectron2_path, head):
    from detectron2.modeling.poolers import ROIPooler
    from detectron2.structures import Boxes

    g = torch.Generator().manual_seed(0)
    strides = (4, 8, 16, 32) if head == "fpn" else (16,)
    features = [torch.randn(1, 4, HEIGHT // s, WIDTH // s, generator=g) for s in strides]
    xy = torch.rand(40, 2, generator=g) * torch.tensor([WIDTH, HEIGHT])
    boxes = torch.cat([xy, xy + torch.rand(40, 2, generator=g) * 150 + 2], dim=1)
    resolution = 7 if head == "fpn" else 14
    theirs = ROIPooler(resolution, [1.0 / s for s in strides], 0, "ROIAlignV2")(features, [Boxes(boxes)])

    def pooled(aligned):
        model = build_detector(
            tiny_cfg(
                head, f"model.roi_heads.pooler_aligned={aligned}", f"model.roi_heads.pooler_resolution={resolution}"
            ),
            3,
        )
        names = ["p2", "p3", "p4", "p5"] if head == "fpn" else ["c4"]
        return model.roi_heads.box_roi_pool(dict(zip(names, features)), [boxes], [(HEIGHT, WIDTH)])

    torch.testing.assert_close(pooled("true"), theirs, rtol=0, atol=1e-5)
    assert (pooled("false") - theirs).abs().max() > 1e-2


def test_box_reg_weights_decode_as_detectron2(detectron2_path):
    from detectron2.modeling.box_regression import Box2BoxTransform

    model = build_detector(
        tiny_cfg("c4", "model.rpn.box_reg_weights=[2, 2, 1, 1]", "model.roi_heads.box_reg_weights=[20, 20, 10, 10]"), 3
    )
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[10.0, 20.0, 60.0, 90.0], [0.0, 0.0, 32.0, 16.0]])
    deltas = torch.randn(2, 4, generator=g)
    for coder, weights in ((model.rpn.box_coder, (2, 2, 1, 1)), (model.roi_heads.box_coder, (20, 20, 10, 10))):
        theirs = Box2BoxTransform(weights).apply_deltas(deltas, boxes)
        torch.testing.assert_close(coder.decode_single(deltas, boxes), theirs)
        default = Box2BoxTransform((1, 1, 1, 1)).apply_deltas(deltas, boxes)
        assert not torch.allclose(coder.decode_single(deltas, boxes), default)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "model.rpn.box_reg_weights=[1, 1, 1]",
            r"model.rpn.box_reg_weights=\[1.0, 1.0, 1.0\]: give 4 positive weights",
        ),
        ("model.roi_heads.box_reg_weights=[10, 10, 0, 5]", r"model.roi_heads.box_reg_weights=.*: give 4 positive"),
        ("model.roi_heads.min_box_size=-1", r"model.roi_heads.min_box_size=-1.0: give 0 \(keep all\) or more pixels"),
    ],
)
def test_bad_option_values_are_one_line(override, message):
    from resnet_det.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(DetectionConfig, None, [override])


def test_min_box_size_keeps_slivers():
    """0 keeps a detection clipped to a sliver of the border (detectron2); torchvision's 0.01 drops it."""
    proposals = [torch.tensor([[10.0, 0.0, 50.0, 0.005], [10.0, 10.0, 50.0, 40.0]])]
    logits, deltas = torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.zeros(2, 8)
    kept = {}
    for size in (0.0, 0.01):
        heads = build_detector(tiny_cfg("c4", f"model.roi_heads.min_box_size={size}"), 1).roi_heads
        kept[size] = len(heads.postprocess_detections(logits, deltas, proposals, [(64, 64)])[0][0])
    assert kept == {0.0: 2, 0.01: 1}
