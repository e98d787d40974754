"""The detector's whole inference as one traceable function of one image, for ONNX and TorchScript.

``FasterRCNN.forward`` takes a list of images and our ``DetectionTransform`` reads their sizes as
Python ints, which a trace would freeze into constants. ``InferenceGraph`` does the same work on a
single ``uint8`` ``3 x H x W`` RGB image with the sizes kept as traced values: the channel order,
mean and std of the weights (one ``addcmul``, as the transform does), zero padding at the bottom
and right to a multiple of ``size_divisibility`` (the mean colour once normalised, as in the
transform), then the backbone, the RPN and the RoI heads of the given model. It returns
``boxes`` (``N x 4``, ``x0 y0 x1 y1`` in the given image's pixels), ``labels`` (``N``, int64, 1 is
the first class) and ``scores`` (``N``). The image is not resized: the caller resizes it as the
config's test sizes say (``Predictor`` and the exported-model runtime both do).
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList


class InferenceGraph(nn.Module):
    """One image in, its detections out; shares the modules (and weights) of ``model``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone
        self.rpn = model.rpn
        self.roi_heads = model.roi_heads
        transform = model.transform
        self.register_buffer("scale", transform.scale.detach().clone())
        self.register_buffer("shift", transform.shift.detach().clone())
        self.bgr = transform.input_format.channel_order == "BGR"
        self.size_divisible = int(transform.size_divisible)

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        height, width = image.shape[-2], image.shape[-1]
        x = image.to(self.scale.dtype)
        x = torch.addcmul(self.shift, x.flip(0) if self.bgr else x, self.scale)
        d = self.size_divisible
        x = F.pad(x, (0, (d - width % d) % d, 0, (d - height % d) % d))[None]
        features = self.backbone(x)
        images = ImageList(x, [(height, width)])
        proposals, _ = self.rpn(images, features)
        detections, _ = self.roi_heads(features, proposals, images.image_sizes)
        return detections[0]["boxes"], detections[0]["labels"], detections[0]["scores"]
