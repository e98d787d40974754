"""Detection checkpoints as backbone weights: where our detectors keep their backbone.

``backbones`` reads a checkpoint of ours by its ``meta.kind`` (``backbones.weights.CHECKPOINT_KINDS``)
and knows nothing of detectors; this module registers the ``detection`` kind, so that
``model.backbone.weights`` (and ``build_backbone(weights=...)`` once ``resnet_det.modeling`` is
imported) can start from a trained detector's backbone.
"""

from typing import Dict, Mapping

import torch

from backbones import BackboneError
from backbones.weights import CHECKPOINT_KINDS

# Where a detector keeps its backbone: torchvision's BackboneWithFPN, our FPN, our C4 model; and
# the C4 box head's res5, which is the backbone's layer4 (``split_res5``).
DETECTION_BACKBONES = ("backbone.body.", "backbone.bottom_up.", "backbone.")
DETECTION_RES5 = "roi_heads.box_head.res5."


def detector_to_backbone(source: str, state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The backbone's weights in a detector's state dict, in the backbone's names (res5 as ``layer4``)."""
    prefix = next((prefix for prefix in DETECTION_BACKBONES if f"{prefix}conv1.weight" in state), None)
    if prefix is None:
        raise BackboneError(
            f"{source}: a detection checkpoint without backbone weights (no conv1.weight under "
            f"{', '.join(DETECTION_BACKBONES)})"
        )
    backbone = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    backbone.update(
        {
            f"layer4.{key[len(DETECTION_RES5) :]}": value
            for key, value in state.items()
            if key.startswith(DETECTION_RES5)
        }
    )
    return backbone


CHECKPOINT_KINDS.register("detection", detector_to_backbone)
