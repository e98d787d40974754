"""Writing a trained detector as one self-describing file: ONNX (onnxruntime) or TorchScript.

What is exported is ``InferenceGraph``: one ``uint8`` ``3 x H x W`` RGB image of any height and
width in (already resized as the config's test sizes say), its normalisation, the backbone, RPN and
RoI heads, and ``boxes`` / ``labels`` / ``scores`` in that image's pixels out. The batch size is 1:
a batch is run image by image (``ExportedModel`` does). The model exported is the inference fast
path's (frozen BN folded when ``test.fold_frozen_bn``), in fp32, on the CPU.

Both formats are traced from the same graph (``torch.jit.script`` cannot compile our backbones'
Python; a trace records the sizes as values, so height and width stay dynamic, which the parity
tests check at several sizes). The file carries ``metadata``: the class names, the dataset's
category ids, the input format and the config (and its hash), as ONNX ``metadata_props`` (string
values, JSON where structured) or a TorchScript ``_extra_files`` entry holding the same keys.
"""

import json
import tempfile
import warnings
from pathlib import Path
from typing import Dict

import torch
from omegaconf import OmegaConf

from resnet_det.config import config_hash
from resnet_det.engine.predictor import LoadedDetector
from resnet_det.errors import ExportError
from resnet_det.modeling import prepare_for_inference
from resnet_det.modeling.export_graph import InferenceGraph
from resnet_det.utils.file_io import atomic_write_bytes

FORMATS = ("onnx", "torchscript")
# torchvision's detection ops (RoIAlign, NMS) export from opset 11; the TorchScript-based exporter
# that handles FasterRCNN's data-dependent shapes goes up to torch's limit.
MIN_OPSET = 11
MAX_OPSET = 20  # torch.onnx's TorchScript-based exporter's highest
DEFAULT_OPSET = 17
TORCHSCRIPT_META = "resnet_det.json"  # the _extra_files entry
EXPORT_EXTRA = "pip install -e .[export]"
# The keys every exported file carries (ONNX metadata_props; the TorchScript entry's JSON keys).
META_KEYS = ("exporter", "class_names", "category_ids", "input_format", "config_hash", "config")
EXPORTER = "resnet_det"


def export_metadata(loaded: LoadedDetector) -> Dict[str, str]:
    """The file's metadata, every value a string (ONNX ``metadata_props`` holds only strings)."""
    cfg = loaded.cfg
    fmt = loaded.model.backbone_input_format
    input_format = {
        "tensor": "uint8, 3 x H x W, RGB, 0..255, batch size 1 (one image per call)",
        "resize": {"shortest_edge": cfg.input.min_size_test, "max_size": cfg.input.max_size_test},
        "normalisation": {
            "channel_order": fmt.channel_order,
            "pixel_mean": list(fmt.pixel_mean),
            "pixel_std": list(fmt.pixel_std),
        },
        "outputs": "boxes N x 4 (x0, y0, x1, y1 in the input's pixels), labels N (int64, 1 = first class), scores N",
    }
    ids = {str(k): int(v) for k, v in (loaded.meta.get("label_to_category_id") or {}).items()}
    return {
        "exporter": EXPORTER,
        "class_names": json.dumps(list(loaded.meta["class_names"])),
        "category_ids": json.dumps(ids),
        "input_format": json.dumps(input_format),
        "config_hash": config_hash(cfg),
        "config": OmegaConf.to_yaml(cfg, resolve=True),
    }


def _graph(loaded: LoadedDetector) -> InferenceGraph:
    model = prepare_for_inference(
        loaded.model.cpu(), fold_bn=loaded.cfg.test.fold_frozen_bn, channels_last=False, compile_backend=None
    )
    return InferenceGraph(model).eval()


def _example() -> torch.Tensor:
    """A tracing input: any content, a size that is not a multiple of the padding (so the padding
    is traced), small so that tracing is quick; other sizes follow from the traced shapes."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 100, 133), dtype=torch.uint8, generator=generator)


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"--opset {opset} is not supported: give {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")


def quantize_int8(model, tmp_dir: Path):
    """``model`` (an ``onnx.ModelProto``) with its fully connected layers (``MatMul``/``Gemm``: the
    box head and predictor) in int8 by onnxruntime's dynamic quantisation: weights int8, activations
    quantised per call. Convolutions stay fp32 (ConvInteger is slower than fp32 convolution there)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = tmp_dir / "fp32.onnx", tmp_dir / "int8.onnx"
    onnx.save(model, str(source))
    quantize_dynamic(source, target, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
    return onnx.load(str(target))


def export_onnx(loaded: LoadedDetector, output: Path, opset: int = DEFAULT_OPSET, int8: bool = False) -> Path:
    """The detector as an ONNX file with dynamic height and width, written atomically; ``int8``:
    its fully connected layers quantised (``quantize_int8``)."""
    check_opset(opset)
    try:
        import onnx
    except ImportError:
        raise ExportError(f"exporting to ONNX needs the onnx package: {EXPORT_EXTRA}") from None
    graph, example = _graph(loaded), _example()
    tmp = output.with_name(f".{output.name}.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on data-dependent shapes, all expected
        torch.onnx.export(
            graph,
            (example,),
            str(tmp),
            opset_version=opset,
            dynamo=False,
            input_names=["image"],
            output_names=["boxes", "labels", "scores"],
            dynamic_axes={
                "image": {1: "height", 2: "width"},
                "boxes": {0: "detections"},
                "labels": {0: "detections"},
                "scores": {0: "detections"},
            },
        )
    model = onnx.load(str(tmp))
    tmp.unlink()
    onnx.checker.check_model(model)
    if int8:
        with tempfile.TemporaryDirectory() as tmp_dir:
            model = quantize_int8(model, Path(tmp_dir))
    meta = export_metadata(loaded)
    meta["precision"] = "int8 (fully connected layers; onnxruntime dynamic quantisation)" if int8 else "fp32"
    onnx.helper.set_model_props(model, meta)
    atomic_write_bytes(output, model.SerializeToString())
    return output


def export_torchscript(loaded: LoadedDetector, output: Path) -> Path:
    """The detector as a TorchScript archive (``torch.jit.load`` needs no resnet-det), atomically."""
    graph, example = _graph(loaded), _example()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, (example,), check_trace=False)
    tmp = output.with_name(f".{output.name}.tmp")
    traced.save(str(tmp), _extra_files={TORCHSCRIPT_META: json.dumps(export_metadata(loaded))})
    tmp.replace(output)
    return output


def export_model(
    loaded: LoadedDetector, fmt: str, output: Path, opset: int = DEFAULT_OPSET, int8: bool = False
) -> Path:
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: give one of {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise ExportError("--int8 is onnxruntime's quantisation: give --format onnx")
    output.parent.mkdir(parents=True, exist_ok=True)
    return export_onnx(loaded, output, opset, int8) if fmt == "onnx" else export_torchscript(loaded, output)
