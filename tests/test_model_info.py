"""tools/model_info.py and the complexity counts behind it."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backbones import build_model
from backbones.complexity import count_multiply_adds, count_parameters, meta_forward

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "model_info.py"


def run_tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("model_info", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prints_r50_numbers():
    result = run_tool("r50")
    assert result.returncode == 0, result.stderr
    assert "25,557,032" in result.stdout and "(25.56 M)" in result.stdout
    assert "(3.86 G at 224x224)" in result.stdout
    assert result.stdout.startswith("r50 (shortcut B, stride_in_1x1 True")


def test_json_output():
    result = run_tool("r50", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["model"] == "r50" and info["input_size"] == 224
    assert info["parameters"] == 25_557_032
    assert info["multiply_adds"] / 1e9 == pytest.approx(3.8, rel=0.03)
    assert info["options"]["shortcut"] == "B" and info["options"]["stride_in_1x1"] is True


def test_user_errors_are_one_line(tool, capsys):
    with pytest.raises(SystemExit) as exit:
        tool.main(["cifar_r21"])
    assert exit.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: cifar_r21: depth must be 6n+2 with n >= 1 (e.g. cifar_r20, cifar_r56, cifar_r110)\n"


def info(tool, capsys, *args):
    tool.main([*args, "--json"])
    return json.loads(capsys.readouterr().out)


def test_options_change_the_counts(tool, capsys):
    paper, torchvision_layout = info(tool, capsys, "r50"), info(tool, capsys, "r50", "--no-stride-in-1x1")
    assert torchvision_layout["multiply_adds"] / 1e9 == pytest.approx(4.09, abs=0.01)
    assert torchvision_layout["parameters"] == paper["parameters"]
    assert info(tool, capsys, "r34", "--shortcut", "C")["parameters"] > info(tool, capsys, "r34")["parameters"]
    assert info(tool, capsys, "r18", "--num-classes", "10")["parameters"] == 11_689_512 - 990 * 513
    big = info(tool, capsys, "r18", "--input-size", "448")
    assert big["input_size"] == 448
    assert big["multiply_adds"] == pytest.approx(4 * info(tool, capsys, "r18")["multiply_adds"], rel=0.01)


def test_cifar_nets_default_to_32_pixels(tool, capsys):
    result = info(tool, capsys, "cifar_r20")
    assert result["input_size"] == 32
    assert result["parameters"] / 1e6 == pytest.approx(0.27, abs=0.005)
    assert result["multiply_adds"] / 1e6 == pytest.approx(40.6, rel=0.01)  # ~41 M, as usually quoted


def test_counting_leaves_the_model_as_it_was():
    model = build_model("cifar_r8").train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert count_multiply_adds(model, 32) > 0 and count_parameters(model) > 0
    assert meta_forward(model, (2, 3, 32, 32)).shape == (2, 10)
    assert model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
