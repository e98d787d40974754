"""Faster R-CNN on the ResNet backbones: the heads registry (the paper's C4 head, FPN, a user's),
the inference fast path, and detection checkpoints read as backbone weights."""

from resnet_det.modeling.backbone_weights import detector_to_backbone
from resnet_det.modeling.detector import build_detector
from resnet_det.modeling.fast_path import compile_backbone, fold_frozen_bn, prepare_for_inference, to_channels_last
from resnet_det.modeling.heads import HEADS, DetectionHead
from resnet_det.modeling.transform import DetectionTransform, resolve_input_format

__all__ = [
    "HEADS",
    "DetectionHead",
    "DetectionTransform",
    "build_detector",
    "compile_backbone",
    "detector_to_backbone",
    "fold_frozen_bn",
    "prepare_for_inference",
    "resolve_input_format",
    "to_channels_last",
]
