"""DetectionTransform: normalisation as the weights expect, channel order, padding, no resize."""

import pytest
import torch

from backbones import InputFormat
from resnet_det.config import DetectionConfig, load_config
from resnet_det.errors import ConfigError
from resnet_det.modeling import DetectionTransform, build_detector, resolve_input_format

MEAN = (100.0, 110.0, 120.0)
STD = (50.0, 60.0, 70.0)


def images():
    torch.manual_seed(0)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in [(40, 70), (65, 30)]]


def reference(image, order="RGB"):
    x = image.float()
    if order == "BGR":
        x = x.flip(0)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_normalises_in_the_weights_channel_order_and_pads_to_32(order):
    transform = DetectionTransform(InputFormat(channel_order=order, pixel_mean=MEAN, pixel_std=STD))
    targets = [{"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]])}]
    batch, out_targets = transform(images(), targets)
    assert batch.tensors.shape == (2, 3, 96, 96) and batch.tensors.dtype == torch.float32
    assert batch.image_sizes == [(40, 70), (65, 30)]
    for image, tensor, (h, w) in zip(images(), batch.tensors, batch.image_sizes):
        torch.testing.assert_close(tensor[:, :h, :w], reference(image, order), rtol=1e-5, atol=1e-5)
        assert tensor[:, h:].abs().sum() == 0 and tensor[:, :, w:].abs().sum() == 0
    assert out_targets is targets


def test_bgr_reorders_red_and_blue():
    red = torch.zeros((3, 32, 32), dtype=torch.uint8)
    red[0] = 255
    fmt = InputFormat(channel_order="BGR", pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0))
    batch, _ = DetectionTransform(fmt)([red])
    assert batch.tensors[0, 2].eq(255).all() and batch.tensors[0, :2].eq(0).all()


def test_accepts_a_permuted_hwc_view():
    image = images()[0]
    hwc_view = image.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    transform = DetectionTransform(InputFormat(channel_order="BGR", pixel_mean=MEAN, pixel_std=STD))
    batch, _ = transform([hwc_view])
    torch.testing.assert_close(batch.tensors[0, :, :40, :70], reference(image, "BGR"), rtol=1e-5, atol=1e-5)


def test_channels_last_batch():
    transform = DetectionTransform(InputFormat(channel_order="RGB", pixel_mean=MEAN, pixel_std=STD))
    transform.memory_format = torch.channels_last
    batch, _ = transform(images())
    assert batch.tensors.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(batch.tensors[0, :, :40, :70], reference(images()[0]), rtol=1e-5, atol=1e-5)


def test_postprocess_keeps_boxes_in_the_given_frame():
    transform = DetectionTransform(InputFormat(channel_order="RGB", pixel_mean=MEAN, pixel_std=STD))
    result = [{"boxes": torch.tensor([[5.0, 6.0, 30.0, 38.0]])}]
    assert torch.equal(transform.postprocess(result, [(40, 70)], [(40, 70)])[0]["boxes"], result[0]["boxes"])


@pytest.mark.parametrize("bad", [torch.zeros((3, 8, 8)), torch.zeros((1, 8, 8), dtype=torch.uint8)])
def test_rejects_float_or_non_rgb_images(bad):
    transform = DetectionTransform(InputFormat(channel_order="RGB", pixel_mean=MEAN, pixel_std=STD))
    with pytest.raises(TypeError, match="uint8 3 x H x W"):
        transform([bad])


def test_config_overrides_only_the_fields_it_sets():
    weights = InputFormat(channel_order="RGB", pixel_mean=MEAN, pixel_std=STD)
    cfg = load_config(
        DetectionConfig, None, ["model.input_format.channel_order=BGR", "model.input_format.pixel_std=[1, 1, 1]"]
    )
    fmt = resolve_input_format(weights, cfg.model.input_format)
    assert fmt.channel_order == "BGR" and list(fmt.pixel_mean) == list(MEAN) and list(fmt.pixel_std) == [1, 1, 1]
    assert resolve_input_format(weights, load_config(DetectionConfig).model.input_format) == weights


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.input_format.channel_order=rgb", "channel_order"),
        ("model.input_format.pixel_mean=[1, 2]", "pixel_mean"),
        ("model.input_format.pixel_std=[1, 0, 1]", "pixel_std"),
    ],
)
def test_bad_input_format_is_a_config_error(override, key):
    weights = InputFormat(channel_order="RGB", pixel_mean=MEAN, pixel_std=STD)
    with pytest.raises(ConfigError, match=f"model.input_format.{key}"):
        resolve_input_format(weights, load_config(DetectionConfig, None, [override]).model.input_format)


def test_detector_feeds_the_backbone_bgr_normalised_images():
    overrides = [
        "model.backbone.name=r18",
        "model.input_format.channel_order=BGR",
        f"model.input_format.pixel_mean={list(MEAN)}",
        f"model.input_format.pixel_std={list(STD)}",
        "model.rpn.post_nms_topk_test=10",
    ]
    model = build_detector(load_config(DetectionConfig, None, overrides), 1).eval()
    assert model.backbone_input_format.channel_order == "BGR"
    seen = []
    model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    image = images()[0]
    with torch.no_grad():
        model([image])
    torch.testing.assert_close(seen[0][0, :, :40, :70], reference(image, "BGR"), rtol=1e-5, atol=1e-5)
