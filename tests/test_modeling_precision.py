"""Inference precision: how ``test.precision`` resolves on the machine at hand, and the bf16 path
(autocast) detecting nearly what fp32 detects, in fp32 outputs."""

import pytest
import torch
from data_fixtures import detection_cfg

from resnet_det.errors import ConfigError
from resnet_det.modeling import build_detector, precision, prepare_for_inference
from resnet_det.modeling.precision import AUTO_CHOICE, Autocast, resolve_precision


def test_auto_follows_the_hardware_and_bf16_is_refused_where_it_is_not_native(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ConfigError, match="test.precision=bf16: cpu has no native bf16"):
        resolve_precision("bf16", cpu)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == AUTO_CHOICE["cpu"] and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="give one of auto, fp32, bf16"):
        resolve_precision("fp16", cpu)


def test_cpu_flags_are_read_from_proc_cpuinfo(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_vnni\n")
    monkeypatch.setattr(precision, "Path", lambda _: info)
    assert not precision.cpu_has_bf16()
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert precision.cpu_has_bf16()


def test_bf16_detections_are_fp32_tensors_close_to_fp32s():
    torch.manual_seed(0)
    cfg = detection_cfg(
        "model.head=fpn",
        "model.backbone.name=r18",
        "model.backbone.weights=null",
        "model.roi_heads.pooler_resolution=7",
        "model.rpn.post_nms_topk_test=20",
    )
    model = build_detector(cfg, 3).eval()
    image = torch.randint(0, 256, (3, 80, 104), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    fp32 = prepare_for_inference(model, channels_last=False)
    bf16 = prepare_for_inference(model, channels_last=False, precision="bf16")
    assert isinstance(bf16, Autocast)
    with torch.inference_mode():
        ref, out = fp32([image])[0], bf16([image])[0]
    assert out["boxes"].dtype == out["scores"].dtype == torch.float32 and len(out["boxes"]) > 0
    # bf16 shifts scores and boxes a little (8-bit mantissa), not wholesale: the top detection agrees.
    assert torch.allclose(out["scores"][0], ref["scores"][0], atol=0.05)
    assert (out["boxes"][0] - ref["boxes"][0]).abs().max() < 4.0
    assert not torch.equal(out["scores"], ref["scores"])  # the autocast path really ran in bf16
