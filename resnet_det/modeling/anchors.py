"""Anchors: torchvision's generator, with two of its choices made optional, for detectron2's.

- Rounding: torchvision rounds each cell anchor's corners to whole pixels; detectron2 keeps them
  exact (``DefaultAnchorGenerator``, offset 0.0): ``model.anchors.round=false``. Unrounded anchors
  are computed in double precision, as detectron2 does, then cast.
- Strides: torchvision places a map's anchors every ``padded image side // map side`` pixels,
  which is not the map's stride where a side is not a multiple of it (FPN's p6, stride 64, on a
  224-pixel side: 56); detectron2 uses the backbone's strides: ``model.anchors.nominal_strides=true``.

The order of the anchors at a location stays torchvision's (aspect ratio major, size minor).
"""

import math
from typing import List, Optional, Sequence

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator as _TorchvisionAnchorGenerator
from torchvision.models.detection.image_list import ImageList


class AnchorGenerator(_TorchvisionAnchorGenerator):
    """torchvision's ``AnchorGenerator``; ``round_anchors=False`` leaves the corners unrounded, and
    ``strides`` (one per feature map) places the anchors at those strides instead of inferred ones."""

    def __init__(self, sizes, aspect_ratios, round_anchors: bool = True, strides: Optional[Sequence[int]] = None):
        self.round_anchors = round_anchors  # read by generate_anchors, which __init__ calls
        super().__init__(sizes, aspect_ratios)
        self.strides = None if strides is None else [int(s) for s in strides]

    def forward(self, image_list: ImageList, feature_maps: List[Tensor]) -> List[Tensor]:
        if self.strides is None:
            return super().forward(image_list, feature_maps)
        grid_sizes = [feature_map.shape[-2:] for feature_map in feature_maps]
        device = feature_maps[0].device
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(feature_maps[0].dtype, device)
        anchors = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors for _ in image_list.image_sizes]

    def generate_anchors(
        self,
        scales: Sequence[int],
        aspect_ratios: Sequence[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),
    ) -> Tensor:
        if self.round_anchors:
            return super().generate_anchors(scales, aspect_ratios, dtype, device)
        anchors = []
        for ratio in aspect_ratios:
            for size in scales:
                w = math.sqrt(size * size / ratio)
                h = ratio * w
                anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return torch.tensor(anchors, dtype=dtype, device=device)
