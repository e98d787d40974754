"""tools/train_cls.py as a user runs it (a subprocess): CIFAR-10 pickle batches and image folders
written here are read end to end, and a checkpoint fine-tunes for another number of classes; and,
in process, the recipe that --dataset picks and how the flags apply on top of it."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_fixtures import make_cifar, make_image_folder

from resnet_det.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "train_cls.py"
QUICK = ("--device", "cpu", "--max-iter", "2", "--batch-size", "4", "train.log_period=1")


def run_tool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RESNET_DET_TRACEBACK"}
    env["RESNET_DET_DATASETS"] = str(cwd / "no-datasets-here")
    return subprocess.run(
        [sys.executable, str(TOOL), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def metrics_of(run: Path):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A two-iteration run of the default recipe (shapes.yaml, r18) on a 3-class image folder."""
    tmp = tmp_path_factory.mktemp("folder")
    make_image_folder(tmp / "animals" / "train", {"cat": 3, "dog": 3, "fox": 3}, size=20)
    make_image_folder(tmp / "animals" / "val", {"cat": 2, "dog": 2, "fox": 2}, size=20)
    proc = run_tool("--dataset", "folder", "--data-root", "animals", "--output", "run", *QUICK, cwd=tmp)
    return tmp, proc


def test_image_folders_train_end_to_end(folder_run):
    tmp, proc = folder_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training r18 on 9 images of folder (3 classes)" in proc.stderr
    assert "(6 images)" in proc.stderr  # the whole val folder was scored
    run = tmp / "run"
    assert "dataset: folder" in (run / "config.yaml").read_text()
    records = metrics_of(run)
    assert [r["iteration"] for r in records if "loss_cls" in r] == [1, 2]
    assert "val/top1_err" in records[-1] and "top1_err" in records[0]
    meta = torch.load(run / "model_final.pth", weights_only=False)["meta"]
    assert meta["class_names"] == ["cat", "dog", "fox"] and meta["num_classes"] == 3


def test_cifar10_pickle_batches_train_end_to_end(tmp_path):
    make_cifar(tmp_path / "data", per_batch=6)
    proc = run_tool(
        "--dataset",
        "cifar10",
        "--data-root",
        "data",
        "--model",
        "cifar_r8",
        "--output",
        "run",
        "dataloader.num_workers=0",
        *QUICK,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training cifar_r8 on 30 images of cifar10 (10 classes)" in proc.stderr
    assert "(6 images)" in proc.stderr  # test_batch
    meta = torch.load(tmp_path / "run" / "model_final.pth", weights_only=False)["meta"]
    assert meta["arch"] == "cifar_r8" and meta["class_names"][:2] == ["airplane", "automobile"]
    assert meta["options"]["shortcut"] == "A"  # the CIFAR recipe's


def test_weights_with_another_number_of_classes_get_a_new_head(folder_run):
    tmp, proc = folder_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = {name: 2 for name in ("a", "b", "c", "d", "e")}
    make_image_folder(tmp / "five" / "train", counts, size=20)
    make_image_folder(tmp / "five" / "val", counts, size=20)
    proc = run_tool(
        "--dataset",
        "folder",
        "--data-root",
        "five",
        "--weights",
        "run/model_final.pth",
        "--output",
        "tuned",
        "dataloader.num_workers=0",
        *QUICK,
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    note = next(line for line in proc.stderr.splitlines() if "classifier head" in line)
    assert "run/model_final.pth" in note and "initialised, not loaded" in note
    assert torch.load(tmp / "tuned" / "model_final.pth", weights_only=False)["meta"]["num_classes"] == 5


def load_tool():
    spec = importlib.util.spec_from_file_location("train_cls_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "dataset, recipe_name, model",
    [("imagenet", "r50", "r50"), ("cifar10", "cifar_r20", "cifar_r56"), ("shapes", "r18", "r18"), (None, "r18", "r18")],
)
def test_the_dataset_picks_the_recipe_and_flags_apply_on_top(dataset, recipe_name, model):
    tool = load_tool()
    args = ["--dataset", dataset] if dataset else []
    cfg = tool.build_config(tool.parse_args(args))
    assert cfg.model.name == recipe_name
    cfg = tool.build_config(tool.parse_args([*args, "solver.base_lr=0.2", "--model", model, "--epochs", "7"]))
    assert (cfg.model.name, cfg.solver.epochs, cfg.solver.base_lr) == (model, 7, 0.2)


def test_max_iter_replaces_the_recipes_epochs():
    tool = load_tool()
    recipe = str(Path(__file__).resolve().parents[1] / "configs/classification/imagenet_r50_torchvision.yaml")
    cfg = tool.build_config(tool.parse_args(["--config", recipe, "--max-iter", "50"]))
    assert cfg.solver.epochs is None and cfg.solver.max_iter == 50
    assert list(cfg.solver.step_epochs) == [30, 60]
    # --dataset imagenet picks the paper's recipe: the plateau rule, in iterations.
    paper = tool.build_config(tool.parse_args(["--dataset", "imagenet"]))
    assert (paper.solver.lr_policy, paper.solver.max_iter, paper.input.mean_subtraction) == (
        "plateau",
        600000,
        "per_pixel",
    )
    with pytest.raises(ConfigError, match="--epochs and --max-iter"):
        tool.build_config(tool.parse_args(["--epochs", "3", "--max-iter", "10"]))


def test_weights_none_trains_from_scratch_whatever_the_recipe_names(folder_run):
    tmp, _ = folder_run
    recipe = tmp / "pretrained.yaml"
    base = os.path.relpath(REPO / "configs" / "classification" / "shapes.yaml", tmp)
    recipe.write_text(f"_base_: {base}\nmodel:\n  weights: missing/model_final.pth\n")
    common = (
        "--config",
        str(recipe),
        "--dataset",
        "folder",
        "--data-root",
        "animals",
        "dataloader.num_workers=0",
        *QUICK,
    )
    proc = run_tool(*common, "--output", "named", cwd=tmp)
    assert proc.returncode == 2 and "missing/model_final.pth not found" in proc.stderr
    proc = run_tool(*common, "--weights", "none", "--output", "scratch", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "weights: null" in (tmp / "scratch" / "config.yaml").read_text()
    assert "loaded " not in proc.stderr and (tmp / "scratch" / "model_final.pth").is_file()
