"""The ResNet family: names, shortcut options, stride placement, norms, the registry and the
feature extractor (freeze_at, split_res5). Counts are checked on the meta device (no compute)."""

import pytest
import torch
import torchvision
from torch import nn

from backbones import (
    BackboneError,
    FrozenBatchNorm2d,
    ShapeSpec,
    build_backbone,
    build_model,
    list_models,
    models,
    register_model,
)
from backbones.complexity import count_multiply_adds, count_parameters
from backbones.resnet import ZeroPadShortcut


def meta_model(name, **options):
    with torch.device("meta"):
        return build_model(name, **options)


@pytest.fixture
def isolated_registry(monkeypatch):
    """Registrations made by a test are forgotten after it."""
    monkeypatch.setattr(models, "MODELS", models.MODELS.copy())


# --- Table 1 and Table 6 -------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_parameter_counts_equal_torchvision(depth):
    with torch.device("meta"):
        reference = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    assert count_parameters(meta_model(f"r{depth}")) == count_parameters(reference)
    assert count_parameters(meta_model(f"r{depth}", stride_in_1x1=False)) == count_parameters(reference)


def test_r50_parameter_count_is_torchvisions_number():
    assert count_parameters(meta_model("r50")) == 25_557_032


@pytest.mark.parametrize("depth, paper", [(18, 1.8), (34, 3.6), (50, 3.8), (101, 7.6), (152, 11.3)])
def test_multiply_adds_match_table1(depth, paper):
    mult_adds = count_multiply_adds(meta_model(f"r{depth}", stride_in_1x1=True, shortcut="B"), 224)
    assert mult_adds / 1e9 == pytest.approx(paper, rel=0.03)


def test_stride_in_3x3_costs_more_multiply_adds_for_bottlenecks_only():
    assert count_multiply_adds(meta_model("r50", stride_in_1x1=False)) > count_multiply_adds(meta_model("r50"))
    assert count_multiply_adds(meta_model("r18", stride_in_1x1=False)) == count_multiply_adds(meta_model("r18"))


@pytest.mark.parametrize("depth, millions", [(20, 0.27), (56, 0.85), (110, 1.7), (1202, 19.4)])
def test_cifar_parameter_counts_match_table6(depth, millions):
    assert count_parameters(meta_model(f"cifar_r{depth}")) / 1e6 == pytest.approx(millions, rel=0.02)


# --- name families and options ---------------------------------------------------------------------


def test_list_models_is_sorted_and_shows_cifar_patterns():
    names = list_models()
    assert names == sorted(names)
    expected = {"r18", "r34", "r50", "r101", "r152", "plain18", "plain152", "cifar_r{6n+2}", "cifar_plain{6n+2}"}
    assert expected <= set(names)


@pytest.mark.parametrize("name", ["r18", "plain18", "cifar_r8", "cifar_plain14", "cifar_r20"])
def test_every_family_classifies(name):
    model = build_model(name, num_classes=7).eval()
    size = 32 if name.startswith("cifar") else 64
    with torch.no_grad():
        logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 7)
    assert model.arch == name


def test_default_number_of_classes_is_the_architectures():
    assert meta_model("r18").fc.out_features == 1000
    assert meta_model("cifar_r20").fc.out_features == 10


@pytest.mark.parametrize("depth, n", [(8, 1), (14, 2), (110, 18)])
def test_cifar_depth_is_6n_plus_2(depth, n):
    model = meta_model(f"cifar_r{depth}")
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [n, n, n]
    assert [getattr(model, f"layer{i}")[0].conv1.out_channels for i in (1, 2, 3)] == [16, 32, 64]
    convs = sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules())
    assert convs + 1 == depth  # + the fc layer


def test_plain_nets_have_no_shortcuts():
    plain = meta_model("plain34")
    blocks = [block for stage in (plain.layer1, plain.layer2) for block in stage]
    assert all(not block.residual and block.downsample is None for block in blocks)
    assert plain.options["shortcut"] is None
    assert meta_model("r34").layer2[0].residual


def test_plain_net_computes_without_the_identity():
    model = build_model("plain18").eval()
    block = model.layer1[0]
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        expected = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))))
        assert torch.equal(block(x), expected)


@pytest.mark.parametrize("family, plain", [("r34", "plain34"), ("r50", "plain50"), ("cifar_r20", "cifar_plain20")])
def test_shortcut_options_parameter_counts(family, plain):
    a, b, c = (count_parameters(meta_model(family, shortcut=s)) for s in "ABC")
    assert a == count_parameters(meta_model(plain))  # option A is parameter-free
    assert a < b < c


def test_shortcut_placement():
    a, b, c = (meta_model("r18", shortcut=s) for s in "ABC")
    assert isinstance(a.layer2[0].downsample, ZeroPadShortcut) and a.layer2[1].downsample is None
    assert isinstance(b.layer2[0].downsample, nn.Sequential) and b.layer2[1].downsample is None
    assert isinstance(c.layer2[1].downsample, nn.Sequential) and isinstance(c.layer1[0].downsample, nn.Sequential)
    assert meta_model("cifar_r20").layer2[0].downsample.__class__ is ZeroPadShortcut  # CIFAR default A


@pytest.mark.parametrize("shortcut", "ABC")
def test_every_shortcut_option_runs(shortcut):
    for name, size in (("r18", 64), ("cifar_r8", 32)):
        model = build_model(name, shortcut=shortcut, num_classes=5).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 3, size, size)).shape == (2, 5)


def test_zero_pad_shortcut_subsamples_and_pads_with_zeros():
    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadShortcut(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert not y[:, 16:].any()


def test_stride_in_1x1_placement():
    paper, tv = meta_model("r50", stride_in_1x1=True), meta_model("r50", stride_in_1x1=False)
    assert paper.layer2[0].conv1.stride == (2, 2) and paper.layer2[0].conv2.stride == (1, 1)
    assert tv.layer2[0].conv1.stride == (1, 1) and tv.layer2[0].conv2.stride == (2, 2)
    assert meta_model("r50").options["stride_in_1x1"] is True  # the paper's by default
    basic = meta_model("r18", stride_in_1x1=True)
    assert basic.layer2[0].conv1.stride == (2, 2) and basic.layer2[0].conv1.kernel_size == (3, 3)


def test_he_initialisation_and_zero_init_residual():
    model = build_model("r18", zero_init_residual=True)
    conv = model.layer3[1].conv1  # fan_out = 256 * 3 * 3
    assert conv.weight.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.05)
    assert all(not block.bn2.weight.any() for stage in (model.layer1, model.layer4) for block in stage)
    assert model.layer1[0].bn1.weight.eq(1).all()
    cifar = build_model("cifar_r8", zero_init_residual=True)
    assert not cifar.layer3[0].bn2.weight.any()
    plain = build_model("cifar_plain8", zero_init_residual=True)  # no residual branch to zero
    assert plain.layer3[0].bn2.weight.eq(1).all()


@pytest.mark.parametrize(
    "norm, kind",
    [("bn", nn.BatchNorm2d), ("frozen_bn", FrozenBatchNorm2d), ("gn", nn.GroupNorm), ("syncbn", nn.SyncBatchNorm)],
)
def test_norms(norm, kind):
    model = build_model("cifar_r8", norm=norm).eval()
    assert isinstance(model.bn1, kind) and isinstance(model.layer3[0].bn2, kind)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_group_norm_uses_32_groups_and_fewer_on_narrow_layers():
    assert meta_model("r18", norm="gn").bn1.num_groups == 32
    assert meta_model("cifar_r8", norm="gn").bn1.num_groups == 16


# --- FrozenBatchNorm2d ---------------------------------------------------------------------------------


def test_frozen_batchnorm_loads_batchnorm_state_and_matches_it():
    bn = nn.BatchNorm2d(8)
    bn.train()
    bn(torch.randn(16, 8, 4, 4) * 3 + 1)  # running statistics away from 0 / 1
    nn.init.uniform_(bn.weight)
    nn.init.uniform_(bn.bias)
    bn.eval()
    frozen = FrozenBatchNorm2d(8)
    frozen.load_state_dict(bn.state_dict())  # strict, num_batches_tracked included
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), bn(x))
        scale, shift = frozen.scale_and_shift()
        torch.testing.assert_close(x * scale[:, None, None] + shift[:, None, None], bn(x))
    assert list(frozen.parameters()) == []


def test_convert_replaces_every_batchnorm_with_its_values():
    model = build_model("cifar_r8").eval()
    with torch.no_grad():
        model.layer2[0].bn1.running_mean.uniform_()
        x = torch.randn(2, 3, 32, 32)
        expected = model(x)
        converted = FrozenBatchNorm2d.convert(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
        torch.testing.assert_close(converted.train()(x), expected)  # train mode: still the same affine


# --- errors ----------------------------------------------------------------------------------------------


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(BackboneError, match=r"unknown model 'r200': known models are .*cifar_r\{6n\+2\}.*r50"):
        build_model("r200")


@pytest.mark.parametrize("name", ["cifar_r21", "cifar_plain2", "cifar_r7"])
def test_wrong_cifar_depth(name):
    with pytest.raises(BackboneError, match=rf"^{name}: depth must be 6n\+2"):
        build_model(name)


def test_bad_options():
    with pytest.raises(BackboneError, match="shortcut 'D' is not one of A, B, C"):
        build_model("r18", shortcut="D")
    with pytest.raises(BackboneError, match="norm 'ln' is not one of bn, frozen_bn, gn, syncbn"):
        build_model("r18", norm="ln")


# --- the registry ----------------------------------------------------------------------------------------


def test_registered_resnet_like_model_works_as_backbone(isolated_registry):
    @register_model("tv_r18")
    def tv_r18(num_classes=1000, **options):
        return torchvision.models.resnet18(num_classes=num_classes)

    assert "tv_r18" in list_models()
    assert build_model("tv_r18", num_classes=3).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    backbone = build_backbone("tv_r18", out_features=("stem", "c5"))
    assert backbone.output_shape() == {"stem": ShapeSpec(64, 4), "c5": ShapeSpec(512, 32)}
    assert backbone(torch.randn(1, 3, 64, 64))["c5"].shape == (1, 512, 2, 2)


def test_other_layouts_need_a_backbone_function(isolated_registry):
    @register_model("tiny_seq")
    def tiny(num_classes=10, **options):
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    with pytest.raises(BackboneError, match=r"model 'tiny_seq' is not laid out as a ResNet .*backbone=fn"):
        build_backbone("tiny_seq")

    class Features(nn.Module):
        def __init__(self, classifier, out_features):
            super().__init__()
            self.body = classifier[0]
            self.out_features = ("c2",)
            self.frozen_at = None

        def output_shape(self):
            return {"c2": ShapeSpec(channels=8, stride=1)}

        def forward(self, x):
            return {"c2": self.body(x)}

        def freeze(self, freeze_at):
            self.frozen_at = freeze_at

    register_model("tiny_seq_features", backbone=Features)(tiny)
    backbone = build_backbone("tiny_seq_features", freeze_at=1)
    assert isinstance(backbone, Features) and backbone.frozen_at == 1
    assert backbone.arch == "tiny_seq_features" and backbone.input_format.channel_order == "RGB"


def test_numbered_family_and_duplicate_names(isolated_registry):
    @register_model("wide{k}")
    def wide(depth, num_classes=10, **options):
        return nn.Linear(depth, num_classes)

    assert build_model("wide12").in_features == 12
    assert "wide{k}" in list_models()
    with pytest.raises(BackboneError, match="'wide{k}' is already registered"):
        register_model("wide{k}")(wide)


# --- the feature extractor ---------------------------------------------------------------------------------


def test_backbone_features_channels_and_strides():
    backbone = build_backbone("r18", out_features=("stem", "c2", "c3", "c4", "c5")).eval()
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, 64, 64))
    assert list(features) == ["stem", "c2", "c3", "c4", "c5"]
    shapes = backbone.output_shape()
    assert {name: shape.stride for name, shape in shapes.items()} == {"stem": 4, "c2": 4, "c3": 8, "c4": 16, "c5": 32}
    assert {name: shape.channels for name, shape in shapes.items()} == {
        "stem": 64,
        "c2": 64,
        "c3": 128,
        "c4": 256,
        "c5": 512,
    }
    for name, feature in features.items():
        side = 64 // shapes[name].stride
        assert feature.shape == (2, shapes[name].channels, side, side)
    assert backbone.input_format.channel_order == "RGB"
    assert not any(key.startswith("fc.") for key in backbone.state_dict())


def test_bottleneck_and_cifar_backbones():
    r50 = build_backbone("r50", out_features=("c2", "c5"))
    assert {name: shape.channels for name, shape in r50.output_shape().items()} == {"c2": 256, "c5": 2048}
    cifar = build_backbone("cifar_r8", out_features=("stem", "c2", "c3", "c4"), norm="bn")
    assert cifar.output_shape() == {
        "stem": ShapeSpec(16, 1),
        "c2": ShapeSpec(16, 1),
        "c3": ShapeSpec(32, 2),
        "c4": ShapeSpec(64, 4),
    }
    with torch.no_grad():
        assert cifar.eval()(torch.randn(1, 3, 32, 32))["c4"].shape == (1, 64, 8, 8)
    with pytest.raises(BackboneError, match=r"cifar_r8: out_features \('c5',\) must be some of stem, c2, c3, c4"):
        build_backbone("cifar_r8", out_features=("c5",))


def test_out_features_are_ordered_and_later_stages_dropped():
    backbone = build_backbone("plain18", out_features=("c3", "stem"))
    assert backbone.out_features == ("stem", "c3")
    assert not hasattr(backbone, "layer3") and not hasattr(backbone, "layer4")
    assert set(backbone.dropped_modules) == {"layer3", "layer4", "avgpool", "fc"}
    assert list(backbone(torch.randn(1, 3, 32, 32))) == ["stem", "c3"]


def frozen_names(backbone):
    return {name.split(".")[0] for name, p in backbone.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize(
    "freeze_at, frozen",
    [(0, set()), (1, {"conv1"}), (2, {"conv1", "layer1"}), (5, {"conv1", "layer1", "layer2", "layer3", "layer4"})],
)
def test_freeze_at_stops_gradients(freeze_at, frozen):
    backbone = build_backbone("r18", freeze_at=freeze_at, norm="bn")
    assert frozen_names(backbone) == frozen
    trainable = {name.split(".")[0] for name, p in backbone.named_parameters() if p.requires_grad}
    frozen_bn1 = {"bn1"} if freeze_at else set()  # converted to FrozenBatchNorm2d: no parameters left
    assert trainable == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"} - frozen - frozen_bn1


def running_means(module):
    return {name: buffer.clone() for name, buffer in module.named_buffers() if name.endswith("running_mean")}


@pytest.mark.parametrize("norm", ["bn", "frozen_bn", "syncbn"])
def test_frozen_stages_keep_their_statistics_in_train_mode(norm):
    backbone = build_backbone("r18", freeze_at=2, norm=norm)
    with torch.no_grad():
        for buffer in running_means(backbone):
            backbone.get_buffer(buffer).uniform_()
    before = running_means(backbone)
    backbone.train()
    backbone(torch.randn(2, 3, 64, 64) * 5 + 3)
    after = running_means(backbone)
    for name in before:
        moved = not torch.equal(before[name], after[name])
        stage = name.split(".")[0]
        assert moved == (norm != "frozen_bn" and stage not in ("bn1", "layer1")), name
    assert isinstance(backbone.layer1[0].bn1, FrozenBatchNorm2d) and isinstance(backbone.bn1, FrozenBatchNorm2d)


def test_freeze_at_out_of_range():
    with pytest.raises(BackboneError, match=r"cifar_r8: freeze_at=5 must be 0 \(train all\) \.\. 4"):
        build_backbone("cifar_r8", out_features=("c4",), freeze_at=5)


def test_split_res5_hands_layer4_to_the_head():
    backbone = build_backbone("r18", out_features=("c4", "c5")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        c5 = backbone(x)["c5"]
        res5 = backbone.split_res5()
        features = backbone(x)
        assert list(features) == ["c4"] and torch.equal(res5(features["c4"]), c5)
    assert backbone.out_features == ("c4",)
    assert backbone.output_shape() == {"c4": ShapeSpec(channels=256, stride=16)}
    assert not any(key.startswith("layer4.") for key in backbone.state_dict())
    assert all(p.requires_grad for p in res5.parameters())  # trained with the head (freeze_at=2)


def test_split_res5_needs_res5():
    with pytest.raises(BackboneError, match="r18: no res5 \\(layer4\\) to split"):
        build_backbone("r18", out_features=("c4",)).split_res5()
    with pytest.raises(BackboneError, match="cifar_r8: no res5"):
        build_backbone("cifar_r8", out_features=("c4",)).split_res5()
    with pytest.raises(BackboneError, match="would leave no features"):
        build_backbone("r18", out_features=("c5",)).split_res5()
