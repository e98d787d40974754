"""Weights: torchvision state dicts, MSRA caffe2 pickles, our checkpoints, the ImageNet cache
(offline: never downloads), and the errors for files that cannot be used."""

import importlib.util
import logging
import os
import pickle
import random
import re
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from backbones import BackboneError, InputFormat, build_backbone, build_model, load_weights

TORCHVISION_MEAN = (123.675, 116.28, 103.53)
STAGES = {"layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"}


def randomize_norms(model, seed=0):
    """BatchNorm far from the identity, so that loading it wrongly shows in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
                module.running_mean.uniform_(-0.2, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


def assert_same_features(a, b):
    assert list(a) == list(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-4 * b[name].abs().max().item())


@pytest.fixture(scope="module")
def torchvision_r50(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_norms(torchvision.models.resnet50(weights=None))
    path = tmp_path_factory.mktemp("tv") / "resnet50.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def torchvision_r18(tmp_path_factory):
    torch.manual_seed(1)
    model = randomize_norms(torchvision.models.resnet18(weights=None))
    path = tmp_path_factory.mktemp("tv") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return model, path


# --- torchvision ------------------------------------------------------------------------------------


def test_torchvision_state_dict_loads_strictly_with_the_same_logits(torchvision_r50):
    reference, _ = torchvision_r50
    model = build_model("r50", stride_in_1x1=False)
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference(x))


def test_torchvision_file_sets_layout_and_input_format(torchvision_r50):
    reference, path = torchvision_r50
    backbone = build_backbone("r50", weights=path).eval()
    assert backbone.layer2[0].conv2.stride == (2, 2)  # stride_in_1x1 follows torchvision's weights
    assert backbone.input_format == InputFormat("RGB", TORCHVISION_MEAN, (58.395, 57.12, 57.375))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_same_features(backbone(x), create_feature_extractor(reference, STAGES)(x))


# --- MSRA / caffe2 ------------------------------------------------------------------------------------


def caffe2_blobs(model):
    """The model's tensors under caffe2's names, each BatchNorm folded into a scale and a shift."""
    blobs = {}

    def add(name, tensor):
        blobs[name] = tensor.detach().numpy().copy()

    def fold(norm, prefix):
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        add(f"{prefix}_s", scale)
        add(f"{prefix}_b", norm.bias - norm.running_mean * scale)

    add("conv1_w", model.conv1.weight)
    fold(model.bn1, "res_conv1_bn")
    for stage_index, stage in enumerate((model.layer1, model.layer2, model.layer3, model.layer4), start=2):
        for block_index, block in enumerate(stage):
            prefix = f"res{stage_index}_{block_index}"
            for index, letter in enumerate("abc", start=1):
                add(f"{prefix}_branch2{letter}_w", getattr(block, f"conv{index}").weight)
                fold(getattr(block, f"bn{index}"), f"{prefix}_branch2{letter}_bn")
            if block.downsample is not None:
                add(f"{prefix}_branch1_w", block.downsample[0].weight)
                fold(block.downsample[1], f"{prefix}_branch1_bn")
    add("fc1000_w", model.fc.weight)
    add("fc1000_b", model.fc.bias)
    return blobs


@pytest.fixture(scope="module")
def msra_r50(tmp_path_factory):
    """A random paper-layout r50 as MSRA .pkl files (both forms), with the features and logits of
    the same tensors loaded through the torchvision path."""
    torch.manual_seed(2)
    model = randomize_norms(build_model("r50", stride_in_1x1=True))
    folder = tmp_path_factory.mktemp("msra")
    torch.save(model.state_dict(), folder / "r50.pth")
    blobs = caffe2_blobs(model)
    with open(folder / "R-50.pkl", "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)  # as the Python 2 originals
    with open(folder / "R-50-blobs-only.pkl", "wb") as f:
        pickle.dump({**blobs, "conv1_w_momentum": np.zeros(1, np.float32)}, f)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = build_backbone("r50", weights=folder / "r50.pth", stride_in_1x1=True).eval()(x)
        logits = model(x)
    return folder, blobs, x, features, logits


@pytest.mark.parametrize("file", ["R-50.pkl", "R-50-blobs-only.pkl"])
def test_msra_pickle_gives_the_features_of_the_same_tensors(msra_r50, file):
    folder, blobs, x, features, _ = msra_r50
    msra = build_backbone("r50", weights=folder / file).eval()
    assert msra.layer2[0].conv1.stride == (2, 2)  # stride in the 1x1, as MSRA's models
    assert msra.input_format == InputFormat("BGR", (103.530, 116.280, 123.675), (1.0, 1.0, 1.0))
    with torch.no_grad():
        assert_same_features(msra(x), features)
    norms = {  # frozen BN computes exactly x * scale + shift
        "res_conv1_bn": msra.bn1,
        "res4_2_branch2b_bn": msra.layer3[2].bn2,
        "res2_0_branch1_bn": msra.layer1[0].downsample[1],
    }
    for prefix, norm in norms.items():
        scale, shift = norm.scale_and_shift()
        assert torch.equal(scale, torch.from_numpy(blobs[f"{prefix}_s"]))
        assert torch.equal(shift, torch.from_numpy(blobs[f"{prefix}_b"]))


def test_msra_classifier_and_report(msra_r50):
    folder, _, x, _, logits = msra_r50
    model = build_model("r50")
    report = load_weights(model, folder / "R-50-blobs-only.pkl")
    assert report.missing == [] and report.unexpected == ["conv1_w_momentum"]
    assert report.input_format.channel_order == "BGR" and model.input_format.channel_order == "BGR"
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), logits, rtol=1e-4, atol=1e-4)


# --- MSRA's real naming: the Caffe prototxt, Detectron's converter, detectron2's reading -------------------

VENDOR_DETECTRON2 = Path(__file__).resolve().parents[2] / "shared" / "vendor" / "detectron2"


def msra_r50_layers():
    """``(caffe conv, caffe bn, our conv, our bn)`` as ResNet-50-deploy.prototxt names its layers:
    conv1 / bn_conv1 (+ scale_conv1), then res2a_branch1 / bn2a_branch1, res2a_branch2a /
    bn2a_branch2a, ..., res5c_branch2c; blocks lettered a, b, c, ... within a stage."""
    yield "conv1", "bn_conv1", "conv1", "bn1"
    for stage, blocks in enumerate((3, 4, 6, 3), start=2):
        for index in range(blocks):
            block = f"{stage}{'abcdef'[index]}"
            branches = [("branch1", "downsample.0", "downsample.1")] if index == 0 else []
            branches += [(f"branch2{c}", f"conv{k}", f"bn{k}") for k, c in enumerate("abc", start=1)]
            for branch, conv, bn in branches:
                ours = f"layer{stage - 1}.{index}"
                yield f"res{block}_{branch}", f"bn{block}_{branch}", f"{ours}.{conv}", f"{ours}.{bn}"


def detectron_blob(caffe_layer: str) -> str:
    """Detectron's ``tools/pickle_caffe_blobs.py`` renaming: a BN/Scale pair ``bn<X>``/``scale<X>``
    becomes ``res<X>_bn``, and ``res<stage><letter or b+number>_...`` becomes ``res<stage>_<index>_...``
    (res2a_branch1 -> res2_0_branch1, res4b11_branch2c -> res4_11_branch2c, bn_conv1 -> res_conv1_bn)."""
    if caffe_layer.startswith("bn"):
        caffe_layer = f"res{caffe_layer[2:]}_bn"
    match = re.fullmatch(r"res(\d)([a-z])(\d*)_(.*)", caffe_layer)
    if match is None:
        return caffe_layer
    stage, letter, number, rest = match.groups()
    return f"res{stage}_{int(number) if number else ord(letter) - ord('a')}_{rest}"


@pytest.fixture(scope="module")
def real_msra_r50(tmp_path_factory):
    """A random paper-layout r50 written with the blob names of the real ``R-50.pkl``: conv1 with
    the Caffe bias (``conv1_b``, before the BN), the classifier ``fc1000_w``/``_b``, and the
    ``*_momentum`` blobs that Detectron's training pickles carry for every weight."""
    torch.manual_seed(4)
    model = randomize_norms(build_model("r50", stride_in_1x1=True))
    modules = dict(model.named_modules())
    blobs = {}
    for caffe_conv, caffe_bn, conv, bn in msra_r50_layers():
        norm = modules[bn]
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias - norm.running_mean * scale
        blobs[f"{detectron_blob(caffe_conv)}_w"] = modules[conv].weight
        blobs[f"{detectron_blob(caffe_bn)}_s"] = scale
        blobs[f"{detectron_blob(caffe_bn)}_b"] = shift
    # The Caffe conv1 adds a bias b before the BN: the same function when the BN's shift is t - s * b.
    conv1_bias = torch.randn(64)
    blobs["conv1_b"] = conv1_bias
    blobs["res_conv1_bn_b"] = blobs["res_conv1_bn_b"] - blobs["res_conv1_bn_s"] * conv1_bias
    blobs["fc1000_w"], blobs["fc1000_b"] = model.fc.weight, model.fc.bias
    momentum = {f"{name}_momentum": torch.zeros_like(value) for name, value in blobs.items()}
    blobs = {name: value.detach().numpy().copy() for name, value in {**blobs, **momentum}.items()}
    path = tmp_path_factory.mktemp("msra_real") / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump(blobs, f, protocol=2)  # ImageNet models: the blobs at the top level
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = create_feature_extractor(model.eval(), STAGES)(x)
        logits = model(x)
    return path, blobs, sorted(momentum), x, features, logits


def test_real_msra_names_load_with_conv1_bias_folded(real_msra_r50, caplog):
    path, blobs, momentum, x, features, logits = real_msra_r50
    assert {
        "conv1_w",
        "conv1_b",
        "res_conv1_bn_s",
        "res2_0_branch1_w",
        "res2_0_branch2a_bn_s",
        "res5_2_branch2c_w",
        "fc1000_w",
        "fc1000_b",
        "conv1_w_momentum",
    } <= set(blobs)
    model = build_model("r50")
    with caplog.at_level(logging.INFO, logger="backbones.weights"):
        report = load_weights(model, path)
    assert report.missing == [] and sorted(report.unexpected) == momentum
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), logits, rtol=1e-4, atol=1e-4)
    assert "conv biases folded into the shift of the BN after them: conv1_b" in caplog.text
    unused = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "not used" in r.getMessage()]
    assert len(unused) == 1 and sorted(unused[0].split("not used: ")[1].split(", ")) == momentum


def test_real_msra_names_in_a_backbone_name_every_blob_left_unused(real_msra_r50, caplog):
    path, _, momentum, x, features, _ = real_msra_r50
    with caplog.at_level(logging.INFO, logger="backbones.weights"):
        backbone = build_backbone("r50", weights=path).eval()
    with torch.no_grad():
        assert_same_features(backbone(x), features)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.endswith("of the modules it leaves out, not used: fc1000_w, fc1000_b") for m in messages), messages
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and sorted(warned[0].split("not used: ")[1].split(", ")) == momentum


def test_msra_names_read_as_detectron2_reads_them(real_msra_r50):
    """Every blob lands where detectron2's ``convert_basic_c2_names`` puts it (in torchvision's names)."""
    file = VENDOR_DETECTRON2 / "detectron2" / "checkpoint" / "c2_model_loading.py"
    if not file.is_file():
        pytest.skip(f"{file} is absent: the vendored detectron2 lives beside the project in CI")
    spec = importlib.util.spec_from_file_location("c2_model_loading", file)
    c2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(c2)
    from backbones.weights import _caffe2_to_torchvision

    def torchvision_name(d2: str) -> str:
        d2 = re.sub(r"^stem\.conv1\.norm\.", "bn1.", d2).replace("stem.conv1.", "conv1.").replace("fc1000.", "fc.")
        d2 = re.sub(r"\.shortcut\.norm\.", ".downsample.1.", d2).replace(".shortcut.", ".downsample.0.")
        d2 = re.sub(r"\.conv(\d)\.norm\.", r".bn\1.", d2)
        return re.sub(r"^res(\d)\.", lambda m: f"layer{int(m.group(1)) - 1}.", d2)

    _, blobs, momentum, *_ = real_msra_r50
    names = sorted(set(blobs) - set(momentum) - {"conv1_b"})  # conv1_b: folded here, unused in detectron2
    theirs = c2.convert_basic_c2_names(names)
    assert [_caffe2_to_torchvision(n) for n in names] == [torchvision_name(t) for t in theirs]
    assert c2.convert_basic_c2_names(["conv1_b"]) == ["stem.conv1.bias"]  # a bias their stem has no place for


# --- our checkpoints ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classification_checkpoint(tmp_path_factory):
    torch.manual_seed(3)
    model = randomize_norms(build_model("cifar_r8", num_classes=7, shortcut="B"))
    meta = {
        "kind": "classification",
        "arch": "cifar_r8",
        "num_classes": 7,
        "input_format": {
            "channel_order": "RGB",
            "pixel_mean": [125.3, 123.0, 113.9],
            "pixel_std": [63.0, 62.1, 66.7],
        },
        "options": dict(model.options),
    }
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    path = tmp_path_factory.mktemp("ckpt") / "model_0000010.pth"
    torch.save({"model": model.state_dict(), "meta": meta, "rng": rng, "iteration": 10, "config": "x: 1\n"}, path)
    return model, path


def test_classification_checkpoint_rebuilds_the_model(classification_checkpoint):
    reference, path = classification_checkpoint
    model = build_model("cifar_r8", weights=path).eval()
    assert model.fc.out_features == 7 and model.options["shortcut"] == "B"  # both from the checkpoint
    assert model.input_format == InputFormat("RGB", (125.3, 123.0, 113.9), (63.0, 62.1, 66.7))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
        backbone = build_backbone("cifar_r8", weights=path, out_features=("c4",)).eval()
        assert_same_features(backbone(x), create_feature_extractor(reference, {"layer3": "c4"})(x))


def test_checkpoint_of_another_arch_is_refused(classification_checkpoint):
    _, path = classification_checkpoint
    with pytest.raises(
        BackboneError, match=r"model_0000010.pth: a checkpoint of cifar_r8, which does not load into r50:"
    ):
        build_backbone("r50", weights=path)
    with pytest.raises(BackboneError, match="a checkpoint of cifar_r8, which does not load into cifar_r14"):
        load_weights(build_model("cifar_r14"), path)


@pytest.fixture
def detection_layer():
    """Detection checkpoints are read as backbone weights by resnet_det.modeling, which registers
    the ``detection`` checkpoint kind; backbones itself does not know where a detector keeps its
    backbone."""
    import resnet_det.modeling.backbone_weights  # noqa: F401


@pytest.mark.parametrize("layout", ["c4", "fpn", "torchvision"])
def test_detection_checkpoint_gives_its_backbone(tmp_path, torchvision_r18, layout, detection_layer):
    reference, _ = torchvision_r18
    body = {key: value for key, value in reference.state_dict().items() if not key.startswith("fc.")}
    if layout == "c4":  # res5 runs in the box head
        state = {f"backbone.{key}": value for key, value in body.items() if not key.startswith("layer4.")}
        res5 = {key[len("layer4.") :]: value for key, value in body.items() if key.startswith("layer4.")}
        state.update({f"roi_heads.box_head.res5.{key}": value for key, value in res5.items()})
    else:
        prefix = "backbone.bottom_up." if layout == "fpn" else "backbone.body."
        state = {prefix + key: value for key, value in body.items()}
        state["backbone.fpn.layer_blocks.0.0.weight"] = torch.zeros(256, 256, 3, 3)
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(3, 1024)
    path = tmp_path / "detector.pth"
    torch.save({"model": state, "meta": {"kind": "detection", "arch": "r18", "head": layout}}, path)
    backbone = build_backbone("r18")
    report = load_weights(backbone, path)
    assert report.missing == [] and report.unexpected == []
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_same_features(backbone.eval()(x), create_feature_extractor(reference, STAGES)(x))


def test_detection_checkpoint_without_backbone(tmp_path, detection_layer):
    path = tmp_path / "detector.pth"
    torch.save({"model": {"rpn.head.conv.weight": torch.zeros(1)}, "meta": {"kind": "detection"}}, path)
    expected = r"detector.pth: a detection checkpoint without backbone weights \(no conv1.weight under backbone.body., "
    with pytest.raises(BackboneError, match=expected):
        build_backbone("cifar_r8", weights=path)


def test_backbones_alone_know_no_detector_layout(tmp_path):
    # The detector's key prefixes live in the detection layer: not one of them in backbones/.
    for module in Path(__file__).resolve().parents[1].joinpath("backbones").glob("*.py"):
        text = module.read_text()
        assert "backbone.body." not in text and "roi_heads.box_head" not in text, module
    # Without the detection layer, a detection checkpoint is a kind backbones cannot read, and
    # the message says what reads it.
    path = tmp_path / "detector.pth"
    torch.save({"model": {"backbone.conv1.weight": torch.zeros(1)}, "meta": {"kind": "detection"}}, path)
    script = (
        "import sys; from backbones import BackboneError, build_backbone\n"
        "try:\n    build_backbone('cifar_r8', weights=sys.argv[1])\n"
        "except BackboneError as e:\n    print(e)\n"
        "assert not any(name.startswith('resnet_det') for name in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "meta.kind is 'detection'; a checkpoint of ours says 'classification'" in run.stdout
    assert "read once resnet_det.modeling is imported" in run.stdout


# --- ImageNet through the torch.hub cache --------------------------------------------------------------------


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch.hub cache and no network: a download attempt fails at once."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "hub" / "checkpoints"


def test_imagenet_offline_says_which_file_to_put_where(offline_hub):
    with pytest.raises(BackboneError) as error:
        build_model("r18", weights="imagenet")
    message = str(error.value)
    assert message == (
        f"resnet18-f37072fd.pth not in {offline_hub} and it cannot be downloaded (no network; offline?): "
        "download https://download.pytorch.org/models/resnet18-f37072fd.pth and put it there"
    )


def test_imagenet_from_the_cache(offline_hub, torchvision_r18):
    reference, path = torchvision_r18
    offline_hub.mkdir(parents=True)
    (offline_hub / "resnet18-f37072fd.pth").write_bytes(path.read_bytes())
    model = build_model("r18", weights="imagenet").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    assert model.input_format.channel_order == "RGB" and model.input_format.pixel_mean == TORCHVISION_MEAN
    assert build_backbone("r18", weights="imagenet").input_format == model.input_format


def test_imagenet_damaged_cache_file(offline_hub):
    offline_hub.mkdir(parents=True)
    (offline_hub / "resnet18-f37072fd.pth").write_bytes(b"")
    expected = r"resnet18-f37072fd.pth cannot be read \(damaged\?\): delete it and download https://"
    with pytest.raises(BackboneError, match=expected):
        build_model("r18", weights="imagenet")


def test_imagenet_weights_exist_for_table1_resnets_only(offline_hub):
    expected = "no ImageNet weights for 'plain18': torchvision publishes them for r18, r34, r50, r101, r152"
    with pytest.raises(BackboneError, match=expected):
        build_model("plain18", weights="imagenet")


# --- what is loaded and what is not ---------------------------------------------------------------------------


def test_missing_and_unexpected_are_reported_by_name(torchvision_r18):
    _, path = torchvision_r18
    plain = load_weights(build_model("plain18"), path)
    assert plain.missing == []
    assert plain.unexpected == [
        f"layer{i}.0.downsample.{j}.{p}"
        for i in (2, 3, 4)
        for j, p in [(0, "weight"), (1, "weight"), (1, "bias"), (1, "running_mean"), (1, "running_var")]
    ]
    deeper = load_weights(build_model("r34"), path)
    assert "layer1.2.conv1.weight" in deeper.missing and "layer4.2.bn2.bias" in deeper.missing
    assert deeper.unexpected == []


def test_backbone_ignores_the_classifier_head_and_dropped_stages(torchvision_r18):
    _, path = torchvision_r18
    report = load_weights(build_backbone("r18", out_features=("c4",)), path)
    assert report.missing == [] and report.unexpected == []


def test_a_head_of_another_size_is_initialised_not_loaded(torchvision_r18):
    reference, path = torchvision_r18
    model = build_model("r18", num_classes=10, weights=path)
    assert model.fc.out_features == 10
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    report = load_weights(build_model("r18", num_classes=10), path)
    assert report.missing == ["fc.weight", "fc.bias"] and report.unexpected == ["fc.weight", "fc.bias"]


def test_shape_mismatch_names_the_layer_and_both_shapes(torchvision_r18):
    _, path = torchvision_r18
    expected = r"layer1\.0\.conv1\.weight has shape \(64, 64, 3, 3\) there but \(64, 64, 1, 1\) in r50"
    with pytest.raises(BackboneError, match=expected):
        build_model("r50", weights=path)


@pytest.mark.parametrize(
    "name, write, why",
    [
        ("empty.pth", lambda path: path.write_bytes(b""), r"\(empty file\)"),
        ("notes.pth", lambda path: path.write_text("just some text\n"), r"\(unreadable: \w+\)"),
        ("notes.pkl", lambda path: path.write_text("just some text\n"), r"\(unreadable: \w+\)"),
        ("dict.pkl", lambda path: path.write_bytes(pickle.dumps({"lr": 0.1})), r"\(no caffe2 blobs in it\)"),
        ("list.pth", lambda path: torch.save([1, 2], path), r"\(it holds a list of other things\)"),
    ],
)
def test_files_that_are_not_weights(tmp_path, name, write, why):
    path = tmp_path / name
    write(path)
    with pytest.raises(BackboneError) as error:
        build_backbone("r18", weights=path)
    message = str(error.value)
    assert re.fullmatch(
        re.escape(f"{path} is not a weights file ")
        + why
        + re.escape(
            "; accepted are 'imagenet', a torchvision state dict (.pth), an MSRA/caffe2 model (.pkl) "
            "or a checkpoint of our own training"
        ),
        message,
    ), message


def test_missing_file_and_foreign_checkpoint(tmp_path):
    with pytest.raises(BackboneError, match=r"weights file .*nothing.pth not found; accepted are 'imagenet'"):
        build_model("r18", weights=tmp_path / "nothing.pth")
    path = tmp_path / "other.pth"
    torch.save({"model": {}, "meta": {"kind": "gan"}}, path)
    with pytest.raises(
        BackboneError, match=r"other.pth: meta.kind is 'gan'; a checkpoint of ours says 'classification'"
    ):
        build_model("r18", weights=path)
    torch.save({"model": {}, "meta": {"kind": "classification", "input_format": {"channel_order": "RGB"}}}, path)
    with pytest.raises(
        BackboneError, match=r"other.pth: meta.input_format \{'channel_order': 'RGB'\} is not \{channel"
    ):
        build_model("r18", weights=path)


def test_input_format_is_checked_and_round_trips():
    fmt = InputFormat("BGR", [1, 2, 3], [4, 5, 6])
    assert fmt.pixel_mean == (1.0, 2.0, 3.0) and InputFormat.from_dict(fmt.to_dict()) == fmt
    with pytest.raises(BackboneError, match="channel_order must be RGB or BGR"):
        InputFormat("rgb", (0, 0, 0), (1, 1, 1))
    with pytest.raises(BackboneError, match="std > 0"):
        InputFormat("RGB", (0, 0, 0), (1, 0, 1))
