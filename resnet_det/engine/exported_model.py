"""Running an exported detector (``tools/export.py``): ONNX through onnxruntime, or TorchScript.

``ExportedModel`` has the calling convention of torchvision's detectors (a list of ``uint8``
``3 x H x W`` images in, one ``{boxes, labels, scores}`` dict per image out), so the test loader's
inference (``run_inference``) runs it as it runs the PyTorch model; ``ExportedPredictor`` is a
``Predictor`` over it, so tools/infer.py draws and writes JSON the same way. The file's metadata
gives the class names, category ids and the config (test sizes, score threshold, test sets).

What a file is comes from its content, not its name: a TorchScript archive is a zip with ``code/``,
an ONNX file a protobuf that ``onnx`` parses; a checkpoint (``torch.save``'s zip, no ``code/``)
or a file exported by another tool is refused with the fix.
"""

import json
import warnings
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn

from resnet_det.config import DetectionConfig, apply_overrides
from resnet_det.config.validate import validate_config
from resnet_det.engine.export import EXPORT_EXTRA, EXPORTER, META_KEYS, TORCHSCRIPT_META
from resnet_det.engine.predictor import Predictor
from resnet_det.errors import ExportError

MODEL_KINDS = ("onnx", "torchscript")


def model_file_kind(path: Path) -> str:
    """``onnx`` or ``torchscript``, from the file's content."""
    if not path.is_file():
        raise ExportError(f"--model {path}: no such file; make one with tools/export.py --run DIR --output FILE")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any("/code/" in f"/{name}" for name in archive.namelist()):
                return "torchscript"
        raise ExportError(
            f"--model {path} is a PyTorch checkpoint, not an exported model: pass it as --weights (or its "
            "folder as --run), or export it with tools/export.py"
        )
    with path.open("rb") as f:
        head = f.read(2)
    # An ONNX ModelProto starts with field 1 (ir_version, a varint): the tag byte 0x08.
    if head[:1] == b"\x08":
        return "onnx"
    raise ExportError(
        f"--model {path} is neither an ONNX file nor a TorchScript archive: give a file written by tools/export.py"
    )


def _check_metadata(meta: Dict[str, str], path: Path) -> Dict[str, str]:
    missing = [k for k in META_KEYS if k not in meta]
    if meta.get("exporter") != EXPORTER or missing:
        raise ExportError(
            f"--model {path} lacks resnet-det's metadata ({', '.join(missing) or 'exporter'}): "
            "export it with tools/export.py --run DIR"
        )
    return meta


class ExportedModel(nn.Module):
    """An exported detector with the PyTorch model's interface (CPU, one image per graph call)."""

    def __init__(self, path: Path, threads: Optional[int] = None):
        super().__init__()
        self.path = Path(path)
        self.kind = model_file_kind(self.path)
        if self.kind == "onnx":
            try:
                import onnxruntime
            except ImportError:
                raise ExportError(f"--model {path}: running ONNX needs onnxruntime: {EXPORT_EXTRA}") from None
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads or torch.get_num_threads()
            try:
                self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own untyped errors on bad files
                raise ExportError(f"--model {path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
            meta = dict(self.session.get_modelmeta().custom_metadata_map)
        else:
            extra = {TORCHSCRIPT_META: ""}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
                self.script = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra)
            try:
                meta = json.loads(extra[TORCHSCRIPT_META] or "{}")
            except json.JSONDecodeError:
                meta = {}
        self.meta = _check_metadata(meta, self.path)
        self.class_names: List[str] = json.loads(self.meta["class_names"])
        self.label_to_category_id = {int(k): int(v) for k, v in json.loads(self.meta["category_ids"]).items()}

    def config(self, overrides=()) -> DictConfig:
        """The config the model was trained with (stored in the file), with ``overrides``."""
        try:
            cfg = OmegaConf.merge(OmegaConf.structured(DetectionConfig), OmegaConf.create(self.meta["config"]))
        except OmegaConfBaseException as e:
            raise ExportError(
                f"the config stored in {self.path} does not fit this version ({str(e).splitlines()[0]}): export it again"
            ) from None
        cfg = apply_overrides(cfg, overrides)
        validate_config(cfg)
        return cfg

    def detect(self, image: Tensor) -> Dict[str, Tensor]:
        image = image.cpu().contiguous()
        if self.kind == "onnx":
            boxes, labels, scores = (torch.from_numpy(a) for a in self.session.run(None, {"image": image.numpy()}))
        else:
            boxes, labels, scores = self.script(image)
        return {"boxes": boxes, "labels": labels, "scores": scores}

    def forward(self, images: List[Tensor]) -> List[Dict[str, Tensor]]:
        return [self.detect(image) for image in images]

    def describe(self) -> str:
        return f"exported model {self.path} ({'onnxruntime' if self.kind == 'onnx' else 'TorchScript'})"


class ExportedPredictor(Predictor):
    """``Predictor`` over an exported model: the same resizing, score threshold and output frame."""

    def __init__(self, model: ExportedModel, cfg: DictConfig, score_thresh: Optional[float] = None):
        self.cfg = cfg
        self.class_names = model.class_names
        self.device = torch.device("cpu")
        self.model = model
        self.score_thresh = cfg.model.roi_heads.score_thresh if score_thresh is None else score_thresh
