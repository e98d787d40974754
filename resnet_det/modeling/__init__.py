"""Faster R-CNN on the ResNet backbones: the paper's C4 head or FPN, and the inference fast path."""

from resnet_det.modeling.detector import build_detector
from resnet_det.modeling.fast_path import compile_backbone, fold_frozen_bn, prepare_for_inference, to_channels_last
from resnet_det.modeling.transform import DetectionTransform, resolve_input_format

__all__ = [
    "DetectionTransform",
    "build_detector",
    "compile_backbone",
    "fold_frozen_bn",
    "prepare_for_inference",
    "resolve_input_format",
    "to_channels_last",
]
