"""Classification training through the shared Trainer, in process, on tiny generated image folders:
the loss goes down, a resumed run ends with the weights of a straight one, the schedule follows
the recipe's epochs, and the checkpoint is the backbone of ``build_backbone`` and the detector."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from backbones import build_backbone
from resnet_det.config import ClassificationConfig, DetectionConfig, load_config
from resnet_det.engine.train_classification import derive_schedule, train_classifier
from resnet_det.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "classification"


def make_learnable_folder(root: Path, size: int = 16, per_class: int = 12) -> Path:
    """``root/{train,val}/{blue,red}/*.png``: noisy reddish and bluish images, learnable in a few
    steps whatever the colour jitter (which changes brightness and saturation, not hue)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name, channel in {"blue": 0, "red": 2}.items():  # OpenCV writes BGR
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
                image[..., channel] = rng.integers(180, 256, size=(size, size), dtype=np.uint8)
                assert cv2.imwrite(str(folder / f"{i}.png"), image)
    return root


def tiny_cfg(data: Path, output: Path, *overrides: str):
    """A CPU run on the tiny folder: no workers, logs every 2 iterations, no lr drops unless asked."""
    return load_config(
        ClassificationConfig,
        None,
        [
            "data.dataset=folder",
            f"data.root={data}",
            f"train.output_dir={output}",
            "train.device=cpu",
            "dataloader.num_workers=0",
            "solver.batch_size=8",
            "solver.steps=[]",
            "train.log_period=2",
            "input.augment=cifar",
            "input.crop_size=16",
            *overrides,
        ],
    )


def read_metrics(run: Path):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "overrides",
    [
        ("model.name=cifar_r8", "solver.base_lr=0.1", "solver.reference_batch_size=8"),
        (
            "model.name=r18",
            "solver.base_lr=0.005",
            "solver.reference_batch_size=8",
            "solver.batch_size=16",
            "input.augment=imagenet",
            # 64 px, not 32: at 32 px layer4's maps are 1x1 and its BatchNorm normalises 16 values a
            # batch, which spiked the loss at the end of the run on some CPUs (2 threads here).
            "input.crop_size=64",
            "input.scale_range=[64,80]",
            "input.test_resize=72",
        ),
    ],
    ids=["cifar_r8", "r18"],
)
def test_a_few_iterations_lower_the_loss(tmp_path, overrides):
    data = make_learnable_folder(tmp_path / "data")
    results = train_classifier(tiny_cfg(data, tmp_path / "run", "solver.max_iter=16", *overrides))
    losses = [r["loss_cls"] for r in read_metrics(tmp_path / "run") if "loss_cls" in r]
    assert len(losses) == 8
    # The median: a step of batch norm on tiny batches may spike the loss of one window.
    assert np.median(losses[4:]) < 0.5 * np.mean(losses[:2])
    # The run also evaluated at the end: it learnt the two colours (chance is 50%), and the
    # figure is in the results and the log.
    assert results["val/top1_err"] <= 25.0
    last = read_metrics(tmp_path / "run")[-1]
    assert last["iteration"] == 16 and last["val/top1_err"] == results["val/top1_err"]
    assert "top1_err" in read_metrics(tmp_path / "run")[0]  # training error of each log period


def test_the_final_evaluation_is_the_models_error_on_the_val_set(tmp_path):
    # Seven classes, so top-5 differs from top-1 and from 0; recomputed here from the saved model
    # on the val images through the val transform, with torch's topk.
    from data_fixtures import make_image_folder

    from backbones import build_model
    from resnet_det.data import build_classification_loaders

    names = {f"c{k}": 3 for k in range(7)}
    make_image_folder(tmp_path / "data" / "train", names, size=16)
    make_image_folder(tmp_path / "data" / "val", names, size=16)
    cfg = tiny_cfg(tmp_path / "data", tmp_path / "run", "model.name=cifar_r8", "solver.max_iter=2")
    results = train_classifier(cfg)

    model = build_model("cifar_r8", 7, weights=str(tmp_path / "run" / "model_final.pth")).eval()
    _, val_loader, _ = build_classification_loaders(cfg)
    hits1 = hits5 = total = 0
    with torch.no_grad():
        for images, labels in val_loader:
            ranked = model(images).topk(5, dim=1).indices
            hits1 += int((ranked[:, 0] == labels).sum())
            hits5 += int((ranked == labels[:, None]).any(dim=1).sum())
            total += len(labels)
    assert total == 21
    assert results["val/top1_err"] == pytest.approx(100 * (1 - hits1 / total))
    assert results["val/top5_err"] == pytest.approx(100 * (1 - hits5 / total))
    assert 0 < results["val/top5_err"] < results["val/top1_err"]
    assert results["val/loss"] > 0  # the validation loss, logged beside the errors

    # The only evaluation is the best one: model_best.pth holds the final weights, and says so.
    best = torch.load(tmp_path / "run" / "model_best.pth", weights_only=True)
    assert best["best"] == {
        "metric": "val/top1_err",
        "mode": "min",
        "value": results["val/top1_err"],
        "iteration": 2,
        "ema": False,
    }
    final = torch.load(tmp_path / "run" / "model_final.pth", weights_only=True)
    assert all(torch.equal(best["model"][k], v) for k, v in final["model"].items())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["best_iteration"] == 2
    assert summary["final_value"] == results["val/top1_err"] and summary["images_per_second"] > 0


def test_resume_gives_the_weights_of_a_straight_run(tmp_path):
    data = make_learnable_folder(tmp_path / "data")
    options = (
        "model.name=cifar_r8",
        "solver.max_iter=6",
        "solver.steps=[4]",
        "train.checkpoint_period=3",
        "train.max_checkpoints_kept=5",
    )
    straight = tmp_path / "straight"
    train_classifier(tiny_cfg(data, straight, *options))

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(straight / "model_0000003.pth", resumed / "model_0000003.pth")
    (resumed / "last_checkpoint").write_text("model_0000003.pth\n")
    train_classifier(tiny_cfg(data, resumed, *options), resume=True)

    a = torch.load(straight / "model_final.pth", weights_only=False)["model"]
    b = torch.load(resumed / "model_final.pth", weights_only=False)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The resumed run trained iterations 4..6 only, and they changed the weights.
    assert [r["iteration"] for r in read_metrics(resumed) if "loss_cls" in r] == [4, 6]
    start = torch.load(straight / "model_0000003.pth", weights_only=False)["model"]
    assert not torch.equal(start["conv1.weight"], b["conv1.weight"])


@pytest.mark.parametrize(
    "rule, expected_lrs",
    [
        # A threshold no error can beat: the first evaluation (iteration 2) sets the best, the
        # next (4) divides the lr from iteration 5 on. The checkpoint of iteration 4 is written
        # after its evaluation, so the resumed run starts with that drop.
        (
            (
                "solver.lr_policy=plateau",
                "solver.plateau_patience=1",
                "solver.plateau_threshold=100",
                "train.eval_period=2",
            ),
            {2: 0.1, 4: 0.1, 6: 0.01},
        ),
        # An error (nearly) every batch is below: the warm-up ends once the window is full (2 iterations).
        (("solver.warmup_until_error=100", "solver.warmup_factor=0.1"), {2: 0.01, 4: 0.1, 6: 0.1}),
    ],
    ids=["plateau", "warmup_until_error"],
)
def test_the_schedule_rules_follow_the_run_and_resume_exactly(tmp_path, monkeypatch, rule, expected_lrs):
    from resnet_det.engine import solver

    monkeypatch.setattr(solver, "TRAIN_ERROR_WINDOW", 2)
    data = make_learnable_folder(tmp_path / "data")
    options = (
        "model.name=cifar_r8",
        "solver.max_iter=6",
        "train.checkpoint_period=2",
        "train.max_checkpoints_kept=5",
        "solver.base_lr=0.1",
        "solver.reference_batch_size=8",
        *rule,
    )
    straight = tmp_path / "straight"
    train_classifier(tiny_cfg(data, straight, *options))
    lrs = {r["iteration"]: r["lr"] for r in read_metrics(straight) if "lr" in r}
    assert lrs == pytest.approx(expected_lrs)

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(straight / "model_0000004.pth", resumed / "model_0000004.pth")
    (resumed / "last_checkpoint").write_text("model_0000004.pth\n")
    train_classifier(tiny_cfg(data, resumed, *options), resume=True)
    assert {r["iteration"]: r["lr"] for r in read_metrics(resumed) if "lr" in r} == pytest.approx({6: expected_lrs[6]})
    a = torch.load(straight / "model_final.pth", weights_only=False)["model"]
    b = torch.load(resumed / "model_final.pth", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_plateau_rule_needs_evaluations(tmp_path):
    data = make_learnable_folder(tmp_path / "data", per_class=2)
    cfg = tiny_cfg(data, tmp_path / "run", "solver.lr_policy=plateau", "solver.max_iter=2")
    with pytest.raises(
        ConfigError, match="solver.lr_policy=plateau reads the validation error .* set train.eval_period"
    ):
        train_classifier(cfg)


def test_epochs_set_the_length_and_the_lr_drops():
    cfg = load_config(ClassificationConfig, CONFIGS / "imagenet_r50_torchvision.yaml")
    # ImageNet's 1,281,167 training images in batches of 256: 5004.6 iterations an epoch.
    assert derive_schedule(cfg.solver, 1281167) == (450411, [150137, 300274])
    # An explicit iteration count (what --max-iter sets) keeps the drops where the epochs put them.
    cut = load_config(
        ClassificationConfig, CONFIGS / "imagenet_r50_torchvision.yaml", ["solver.epochs=null", "solver.max_iter=100"]
    )
    assert derive_schedule(cut.solver, 1281167) == (100, [150137, 300274])
    # Accumulating 2 micro-batches per step: an effective batch of 512, half the steps an epoch.
    accumulating = load_config(
        ClassificationConfig, CONFIGS / "imagenet_r50_torchvision.yaml", ["solver.accumulate_steps=2"]
    )
    assert derive_schedule(accumulating.solver, 1281167) == (225206, [75069, 150137])
    # A recipe in iterations (CIFAR-10's 32k/48k/64k) is left as it is.
    cifar = load_config(ClassificationConfig, CONFIGS / "cifar10_resnet.yaml")
    assert derive_schedule(cifar.solver, 50000) == (64000, [32000, 48000])


def test_the_checkpoint_is_a_backbone_and_a_detector_backbone(tmp_path):
    data = make_learnable_folder(tmp_path / "data", size=32, per_class=4)
    run = tmp_path / "run"
    train_classifier(tiny_cfg(data, run, "model.name=r18", "solver.max_iter=2", "input.crop_size=32"))
    checkpoint = run / "model_final.pth"
    meta = torch.load(checkpoint, weights_only=False)["meta"]
    assert meta["kind"] == "classification" and meta["arch"] == "r18" and meta["num_classes"] == 2
    assert meta["class_names"] == ["blue", "red"]
    trained = torch.load(checkpoint, weights_only=False)["model"]

    backbone = build_backbone("r18", out_features=("c4", "c5"), weights=str(checkpoint))
    state = backbone.state_dict()
    for key in ("conv1.weight", "layer3.1.conv2.weight", "layer4.0.downsample.0.weight", "layer2.0.bn1.running_mean"):
        assert torch.equal(state[key], trained[key]), key
    assert tuple(backbone.input_format.pixel_mean) == tuple(meta["input_format"]["pixel_mean"])

    from resnet_det.modeling import build_detector

    det_cfg = load_config(DetectionConfig, None, ["model.backbone.name=r18", f"model.backbone.weights={checkpoint}"])
    detector = build_detector(det_cfg, num_classes=3).state_dict()
    assert torch.equal(detector["backbone.conv1.weight"], trained["conv1.weight"])
    assert torch.equal(detector["backbone.layer3.0.conv1.weight"], trained["layer3.0.conv1.weight"])
    # The C4 head runs res5 (layer4) on the pooled regions: it carries the trained res5 too.
    assert torch.equal(detector["roi_heads.box_head.res5.1.conv2.weight"], trained["layer4.1.conv2.weight"])


def test_a_per_pixel_run_records_the_channel_means_of_its_mean_image(tmp_path):
    # A detector fine-tuned from these weights subtracts a mean per channel: the mean image's.
    data = make_learnable_folder(tmp_path / "data", per_class=2)
    run = tmp_path / "run"
    train_classifier(
        tiny_cfg(data, run, "model.name=cifar_r8", "solver.max_iter=1", "input.mean_subtraction=per_pixel")
    )
    meta = torch.load(run / "model_final.pth", weights_only=False)["meta"]
    rgb = [cv2.imread(str(p))[..., ::-1] for p in sorted((data / "train").rglob("*.png"))]
    expected = np.mean(rgb, axis=(0, 1, 2))
    assert meta["input_format"]["pixel_mean"] == pytest.approx(expected.tolist(), rel=1e-5)
    assert meta["input_format"]["pixel_std"] == pytest.approx([58.395, 57.12, 57.375])
