"""Each switch of the fast path against the plain path, for both heads and both RoI poolers.

Every test runs ``train_detector`` in-process for a few iterations on tiny generated data (r18,
images of 96..128 pixels, frozen BN with ImageNet-like statistics so that folding folds
something), once with the switch and once without (same seed and data), and compares the logged
losses and the detections of the final evaluation within the tolerances stated below.
"""

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import pytest
import torch
from test_modeling_fast_path import random_frozen_bn_
from test_train_det import write_tiny_coco

import resnet_det.engine.inference as inference
import resnet_det.engine.train_detection as train_detection
from backbones import build_backbone
from backbones.norm import FrozenBatchNorm2d
from resnet_det.config import DetectionConfig, load_config

HEADS_AND_POOLERS = [(head, pooler) for head in ("c4", "fpn") for pooler in ("roi_align", "roi_pool")]
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the switch only acts on a GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]
ITERATIONS = 3

# Switches that compute the same thing in another way (layout, kernel choice, folded BN, compiled
# graph) in fp32: losses within 1e-4 relative, boxes within 0.05 pixel, scores within 1e-3.
EXACT = {"loss_rtol": 1e-4, "min_iou": 0.99, "median_iou": 0.99, "score_atol": 1e-3}
# The same on a GPU, where cuDNN's algorithms (and atomics in RoIAlign's backward) reorder sums,
# and a proposal that moves changes the RoIs sampled in the next iteration.
GPU_CLOSE = {"loss_rtol": 0.02, "min_iou": 0.5, "median_iou": 0.95, "score_atol": 0.05}
# bf16 autocast: the first iteration (same weights) differs by bf16 rounding only; the next ones
# also by the rounded gradients of the steps before. Detections come from fp32 inference of the
# weights trained so: each top-5 plain detection has a same-class match, typically at IoU ~0.97.
AMP_FIRST_LOSS_RTOL = 0.02
AMP = {"loss_rtol": 0.15, "min_iou": 0.3, "median_iou": 0.9, "score_atol": 0.1}


@dataclass
class Run:
    losses: List[Dict[str, float]]  # one dict per iteration: total_loss and each loss term
    detections: List[dict]  # COCO-format, as eval/<dataset>/detections.json holds them


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Four generated images (COCO format) and r18 weights whose frozen BN is not the identity."""
    root = tmp_path_factory.mktemp("switches")
    ann, images = write_tiny_coco(root / "data", n=4)
    torch.manual_seed(3)
    source = build_backbone("r18", weights=None, norm="frozen_bn", freeze_at=0)
    with torch.no_grad():
        random_frozen_bn_(source)
    weights = root / "r18.pth"
    torch.save(source.state_dict(), weights)
    # A name of this module's own: registered datasets live as long as the test process.
    return {"ann": ann, "images": images, "weights": weights, "root": root, "name": f"switches_{uuid.uuid4().hex[:8]}"}


def run_training(tiny_data, head, pooler, device, *switches) -> Run:
    out = tiny_data["root"] / "runs" / "-".join([head, pooler, device, *switches]).replace("/", "_")
    shutil.rmtree(out, ignore_errors=True)
    resolution = 8 if head == "c4" else 7
    name = tiny_data["name"]
    cfg = load_config(
        DetectionConfig,
        None,
        [
            f"model.head={head}",
            f"model.roi_heads.pooler={pooler}",
            f"model.roi_heads.pooler_resolution={resolution}",
            "model.backbone.name=r18",
            f"model.backbone.weights={tiny_data['weights']}",
            f"datasets.custom.{name}.images={tiny_data['images']}",
            f"datasets.custom.{name}.annotations={tiny_data['ann']}",
            f"datasets.train=[{name}]",
            f"datasets.test=[{name}]",
            "input.min_size_train=[96]",
            "input.max_size_train=128",
            "input.min_size_test=96",
            "input.max_size_test=128",
            "model.rpn.pre_nms_topk_train=200",
            "model.rpn.post_nms_topk_train=64",
            "model.rpn.pre_nms_topk_test=100",
            "model.rpn.post_nms_topk_test=32",
            "model.roi_heads.batch_size_per_image=32",
            "model.roi_heads.fc_dim=64",
            "model.fpn_channels=32",
            "model.roi_heads.score_thresh=0.0",
            "model.roi_heads.detections_per_image=10",
            "dataloader.num_workers=0",
            f"solver.max_iter={ITERATIONS}",
            "solver.batch_size=2",
            "solver.base_lr=0.002",
            "solver.reference_batch_size=2",
            "solver.warmup_iters=1",
            "solver.steps=[]",
            "train.log_period=1",
            "train.checkpoint_period=100",
            f"train.device={device}",
            f"train.output_dir={out}",
            # The plain path: every switch off; a test turns one on.
            "train.amp=false",
            "train.channels_last=false",
            "train.cudnn_benchmark=false",
            "train.compile_backbone=null",
            "test.fold_frozen_bn=false",
            *switches,
        ],
    )
    train_detection.train_detector(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [{k: v for k, v in r.items() if "loss" in k} for r in rows if "total_loss" in r]
    assert len(losses) == ITERATIONS
    detections = json.loads((out / "eval" / name / "detections.json").read_text())
    assert detections, "a score threshold of 0 leaves detections on every image"
    return Run(losses, detections)


@pytest.fixture(scope="module")
def plain_runs(tiny_data):
    """The plain path's run of each (head, pooler, device), made once for the whole module."""
    cache: Dict[tuple, Run] = {}

    def get(head, pooler, device):
        if (head, pooler, device) not in cache:
            cache[head, pooler, device] = run_training(tiny_data, head, pooler, device)
        return cache[head, pooler, device]

    return get


def iou_xywh(a, b) -> float:
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def assert_close_runs(plain: Run, fast: Run, tol: Dict[str, float], top_k: int = 5) -> None:
    """Losses per iteration within ``loss_rtol``; each of an image's ``top_k`` plain detections has
    a same-class fast detection: its best IoU at least ``min_iou`` (the median over all at least
    ``median_iou``), and that detection's score within ``score_atol``."""
    for i, (p, f) in enumerate(zip(plain.losses, fast.losses)):
        assert p.keys() == f.keys()
        for key in p:
            assert f[key] == pytest.approx(p[key], rel=tol["loss_rtol"]), (i + 1, key, p[key], f[key])
    ious, score_diffs = [], []
    image_ids = sorted({d["image_id"] for d in plain.detections})
    assert image_ids == sorted({d["image_id"] for d in fast.detections})
    for image_id in image_ids:
        theirs = [d for d in fast.detections if d["image_id"] == image_id]
        for d in [d for d in plain.detections if d["image_id"] == image_id][:top_k]:
            same_class = [e for e in theirs if e["category_id"] == d["category_id"]]
            assert same_class, (image_id, d)
            best = max(same_class, key=lambda e: iou_xywh(d["bbox"], e["bbox"]))
            ious.append(iou_xywh(d["bbox"], best["bbox"]))
            score_diffs.append(abs(best["score"] - d["score"]))
    assert min(ious) >= tol["min_iou"], ious
    assert float(np.median(ious)) >= tol["median_iou"], ious
    assert max(score_diffs) <= tol["score_atol"], score_diffs


def assert_identical_runs(plain: Run, fast: Run) -> None:
    assert fast.losses == plain.losses
    assert fast.detections == plain.detections


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("head, pooler", HEADS_AND_POOLERS)
def test_amp_trains_close_to_fp32(tiny_data, plain_runs, head, pooler, device):
    """Also the crash of roi_pool under autocast ("input should have the same type as rois")."""
    plain = plain_runs(head, pooler, device)
    amp = run_training(tiny_data, head, pooler, device, "train.amp=true")
    assert amp.losses != plain.losses, "train.amp=true left the losses bit-identical: autocast did not run"
    first_p, first_a = plain.losses[0]["total_loss"], amp.losses[0]["total_loss"]
    assert first_a == pytest.approx(first_p, rel=AMP_FIRST_LOSS_RTOL)
    assert_close_runs(plain, amp, AMP)


@pytest.mark.parametrize("head, pooler", HEADS_AND_POOLERS)
def test_fold_frozen_bn_gives_the_plain_detections(tiny_data, plain_runs, head, pooler, monkeypatch):
    folded = []

    def spy(model, **kwargs):
        fast = prepare(model, **kwargs)
        folded.append(not any(isinstance(m, FrozenBatchNorm2d) for m in fast.modules()))
        return fast

    prepare = inference.prepare_for_inference
    monkeypatch.setattr(inference, "prepare_for_inference", spy)
    fast = run_training(tiny_data, head, pooler, "cpu", "test.fold_frozen_bn=true")
    assert folded == [True], "the evaluation did not run on a folded model"
    plain = plain_runs(head, pooler, "cpu")
    assert fast.losses == plain.losses  # folding is for inference only
    assert_close_runs(plain, fast, EXACT)


@pytest.mark.parametrize("head, pooler", HEADS_AND_POOLERS)
def test_channels_last_and_cudnn_benchmark_are_no_ops_on_cpu(tiny_data, plain_runs, head, pooler, monkeypatch):
    """Both act on CUDA only (NHWC for cuDNN's tensor-core kernels; cuDNN's timing of its kernels):
    on CPU the run is bit-identical to the plain one."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored after
    plain = plain_runs(head, pooler, "cpu")
    assert_identical_runs(plain, run_training(tiny_data, head, pooler, "cpu", "train.channels_last=true"))
    assert_identical_runs(plain, run_training(tiny_data, head, pooler, "cpu", "train.cudnn_benchmark=true"))
    assert torch.backends.cudnn.benchmark  # set as asked, for a GPU to use


@NEEDS_CUDA
@pytest.mark.parametrize("switch", ["train.channels_last=true", "train.cudnn_benchmark=true"])
@pytest.mark.parametrize("head, pooler", HEADS_AND_POOLERS)
def test_channels_last_and_cudnn_benchmark_on_cuda(tiny_data, plain_runs, head, pooler, switch):
    plain = plain_runs(head, pooler, "cuda")
    assert_close_runs(plain, run_training(tiny_data, head, pooler, "cuda", switch), GPU_CLOSE)


def cpp_compiler():
    """The C++ compiler inductor's CPU backend would call ($CXX, else g++ as torch's default, or clang++)."""
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("clang++")


@pytest.mark.slow
@pytest.mark.skipif(cpp_compiler() is None, reason="no C++ compiler (g++ / clang++ / $CXX): inductor cannot build")
@pytest.mark.parametrize("head, pooler", HEADS_AND_POOLERS)
def test_inductor_compiled_backbone_trains_as_eager(tiny_data, plain_runs, head, pooler, monkeypatch):
    compiled = []

    def spy(model, backend):
        compiled.append(backend)
        return compile_backbone(model, backend)

    compile_backbone = train_detection.compile_backbone
    monkeypatch.setattr(train_detection, "compile_backbone", spy)
    fast = run_training(tiny_data, head, pooler, "cpu", "train.compile_backbone=inductor")
    assert compiled == ["inductor"]
    assert_close_runs(plain_runs(head, pooler, "cpu"), fast, EXACT)
