"""tools/train_det.py end to end on tiny generated data: both heads learn, outputs are complete,
a resumed run equals an uninterrupted one, torchrun with gloo works, and real COCO through the
user's-own-data path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from resnet_det.config import DetectionConfig, load_config
from resnet_det.data.shapes import CLASS_NAMES, draw_detection_image

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def write_tiny_coco(root: Path, n: int = 6, seed: int = 0) -> tuple:
    """``n`` shapes images (COCO format, category ids 1..3) under ``root``."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    (root / "images").mkdir(parents=True)
    for i in range(n):
        image, objects = draw_detection_image(rng)
        name = f"{i:03d}.png"
        cv2.imwrite(str(root / "images" / name), image[:, :, ::-1])
        images.append({"id": i + 1, "file_name": name, "height": image.shape[0], "width": image.shape[1]})
        for label, (x0, y0, x1, y1) in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": label,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASS_NAMES)]
    ann = root / "annotations.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann, root / "images"


TINY = [
    "model.backbone.weights=null",
    "model.backbone.norm=bn",
    "model.backbone.freeze_at=0",
    "input.min_size_train=[96]",
    "input.max_size_train=128",
    "input.min_size_test=96",
    "input.max_size_test=128",
    "model.rpn.pre_nms_topk_train=200",
    "model.rpn.post_nms_topk_train=64",
    "model.rpn.pre_nms_topk_test=100",
    "model.rpn.post_nms_topk_test=32",
    "model.roi_heads.batch_size_per_image=32",
    "dataloader.num_workers=0",
    "solver.warmup_iters=2",
    "train.log_period=1",
]


def tiny_det_args(ann, images, output, *extra: str, head="fpn", val=True, batch_size=2, lr=0.005) -> list:
    """train_det.py's arguments for a TINY r18 run on ``ann``/``images`` (also its validation set,
    unless ``val`` is false), then ``extra`` (a later flag or override wins)."""
    data = ["--train-json", str(ann), "--train-images", str(images)]
    if val:
        data += ["--val-json", str(ann), "--val-images", str(images)]
    return [
        *("--head", head, "--backbone", "r18", *data, "--output", str(output)),
        *("--batch-size", str(batch_size), "--lr", str(lr), *TINY, *extra),
    ]


def run_tool(args, timeout=600):
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools/train_det.py"), *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc


def losses(run_dir: Path):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["total_loss"] for r in rows if "total_loss" in r]


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    return write_tiny_coco(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("head", ["c4", "fpn"])
def test_both_heads_train_and_the_loss_falls(tmp_path, tiny_coco, head):
    """The whole tiny set in every batch, no flips: the same batch each time, so the fall is not noise."""
    ann, images = tiny_coco
    out = tmp_path / "run"
    proc = run_tool(
        tiny_det_args(
            ann,
            images,
            out,
            "--max-iter",
            "20",
            "input.hflip_prob=0",
            "solver.clip_grad_norm=5.0",
            "train.checkpoint_period=10",
            head=head,
            batch_size=6,
        )
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = losses(out)
    assert len(values) == 20 and all(np.isfinite(values))
    assert np.mean(values[-4:]) < 0.7 * np.mean(values[:3]), values
    for name in ("config.yaml", "data_report.json", "model_final.pth", "last_checkpoint", "model_0000020.pth"):
        assert (out / name).is_file(), name
    assert list((out / "tb").iterdir())
    report = json.loads((out / "eval" / "custom_val" / "report.json").read_text())
    assert report["metric"] == "coco" and set(report["summary"]) >= {"AP", "AP50", "AR100"}
    # The validation losses of both heads, from the same pass, beside AP in metrics.jsonl.
    final_eval = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    parts = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")
    assert {f"custom_val/{k}" for k in ("AP", "loss", *parts)} <= set(final_eval)
    assert final_eval["custom_val/loss"] == pytest.approx(sum(final_eval[f"custom_val/{k}"] for k in parts))
    assert report["losses"]["loss"] == final_eval["custom_val/loss"]
    best = torch.load(out / "model_best.pth", weights_only=True)["best"]
    assert best["metric"] == "custom_val/AP" and best["mode"] == "max" and best["iteration"] == 20
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["best_metric"] == "custom_val/AP"
    assert "summary: finished at iteration 20/20, best custom_val/AP " in proc.stderr
    saved = load_config(DetectionConfig, out / "config.yaml")
    assert saved.model.head == head and saved.solver.max_iter == 20


def test_resumed_run_equals_uninterrupted(tmp_path, tiny_coco):
    """Stop at iteration 3 (a finished 3-iteration run), resume to 6: the same weights as 6 straight."""
    ann, images = tiny_coco

    def args(output, max_iter, *extra):
        extra = ("--max-iter", max_iter, "datasets.test=[]", "train.checkpoint_period=3", *extra)
        return tiny_det_args(ann, images, output, *extra, val=False, lr=0.01)

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_tool(args(straight, "6")).returncode == 0
    assert run_tool(args(split, "3")).returncode == 0
    proc = run_tool(args(split, "6", "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(straight / "model_final.pth", weights_only=False)["model"]
    b = torch.load(split / "model_final.pth", weights_only=False)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_to_overwrite_and_explains_bad_flags(tmp_path, tiny_coco):
    ann, images = tiny_coco
    proc = run_tool(["--train-json", str(ann)])
    assert proc.returncode == 2 and "--train-json and --train-images go together" in proc.stderr
    proc = run_tool(["--config", "configs/coco/faster_rcnn_c4.yaml", "--dataset", "coco"])
    assert proc.returncode == 2 and "picks a recipe" in proc.stderr
    proc = run_tool(["--backbone", "r51", "model.backbone.weights=null", "--output", str(tmp_path / "x")])
    assert proc.returncode == 2 and "r51" in proc.stderr and "r50" in proc.stderr
    proc = run_tool(["solver.bse_lr=1"])
    assert proc.returncode == 2 and "did you mean solver.base_lr" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_torchrun_two_processes_gloo(tmp_path, tiny_coco):
    ann, images = tiny_coco
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29517",
            str(REPO / "tools/train_det.py"),
            *tiny_det_args(ann, images, out, "--max-iter", "3", "--device", "cpu", lr=0.01),
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model_final.pth").is_file()
    assert len(losses(out)) == 3
    report = json.loads((out / "eval" / "custom_val" / "report.json").read_text())
    assert report["num_images"] == 6  # both ranks' shards gathered


def test_real_coco_mini_through_own_data_path(tmp_path, shared_data):
    coco = shared_data / "coco_mini"
    out = tmp_path / "coco"
    proc = run_tool(tiny_det_args(coco / "annotations.json", coco / "images", out, "--max-iter", "4"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(np.isfinite(losses(out)))
    meta = torch.load(out / "model_final.pth", weights_only=False)["meta"]
    assert meta["num_classes"] == 80
    assert meta["label_to_category_id"][80] == 90  # COCO's ids 1..90 with gaps, mapped back
    report = json.loads((out / "eval" / "custom_val" / "report.json").read_text())
    assert report["num_images"] == 128
    dets = json.loads((out / "eval" / "custom_val" / "detections.json").read_text())
    valid_ids = {c["id"] for c in json.loads((coco / "annotations.json").read_text())["categories"]}
    assert all(d["category_id"] in valid_ids for d in dets)


def test_shapes_recipe_names_the_command_for_its_weights_and_weights_none_trains_from_scratch(tmp_path, tiny_coco):
    """configs/shapes/*.yaml start from output/shapes_cls/model_final.pth (tools/train_cls.py's run):
    missing (a fresh folder), the error says how to make it; --weights none trains without it."""
    ann, images = tiny_coco
    data = ["--train-json", str(ann), "--train-images", str(images), "datasets.test=[]"]
    recipe = ["--config", str(REPO / "configs/shapes/faster_rcnn_c4.yaml"), "--backbone", "r18"]
    tiny = [o for o in TINY if not o.startswith("model.backbone.weights=")]
    run = [sys.executable, str(REPO / "tools/train_det.py"), *recipe, *data, "--max-iter", "1", "--batch-size", "2"]
    proc = subprocess.run([*run, *tiny], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        "error: model.backbone.weights=output/shapes_cls/model_final.pth not found: `python tools/train_cls.py` "
        "makes it (the shapes pretraining, a few CPU minutes); or pass --weights imagenet | FILE | none"
    ) in proc.stderr
    assert not (tmp_path / "output").exists()  # refused before writing anything
    proc = subprocess.run(
        [*run, "--weights", "none", *tiny], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = load_config(DetectionConfig, tmp_path / "output/shapes_c4/config.yaml")
    assert saved.model.backbone.weights is None and (tmp_path / "output/shapes_c4/model_final.pth").is_file()
