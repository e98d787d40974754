"""Input normalisation as the loaded weights expect, and batching; never resizing.

The data loader resizes each image once, in its workers, and hands the model ``uint8`` RGB images
at their final size. Keeping them ``uint8`` until here makes host-to-device copies one byte per
pixel; the channel order, mean and std then follow the weights the backbone loaded (torchvision's:
RGB with ImageNet mean and std; MSRA's: BGR, mean only), unless ``model.input_format`` overrides them.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

from backbones import InputFormat


def resolve_input_format(weights_format: InputFormat, overrides) -> InputFormat:
    """The backbone's ``input_format`` with the non-null fields of ``cfg.model.input_format`` applied
    (validated by ``load_config``)."""
    fields = {}
    for key in ("channel_order", "pixel_mean", "pixel_std"):
        value = getattr(overrides, key)
        fields[key] = getattr(weights_format, key) if value is None else value
    return InputFormat(fields["channel_order"], tuple(fields["pixel_mean"]), tuple(fields["pixel_std"]))


class DetectionTransform(nn.Module):
    """What torchvision's ``GeneralizedRCNNTransform`` does for ``FasterRCNN``, minus the resize.

    ``forward`` takes ``uint8`` ``3 x H x W`` RGB images and returns an ``ImageList`` of one float
    batch, zero-padded (the mean colour once normalised) at the bottom and right to a multiple of
    ``size_divisible``, so every feature map's stride divides the padded size exactly. Each image is
    normalised by a single ``addcmul`` (``x * 1/std - mean/std``) written straight into its slot in
    the batch: no float copy of the image is made. Targets pass through untouched, and detections
    are already in the coordinates of the images given, so ``postprocess`` has nothing to undo.
    """

    def __init__(self, input_format: InputFormat, size_divisible: int = 32):
        super().__init__()
        self.input_format = input_format
        self.size_divisible = size_divisible
        # channels_last batches feed channels_last convolutions without a layout conversion.
        self.memory_format = torch.contiguous_format
        # Stored in the weights' channel order; the image is reordered to match before normalising.
        mean = torch.tensor(input_format.pixel_mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(input_format.pixel_std, dtype=torch.float32).view(3, 1, 1)
        # Not persistent: the format is a property of the weights (recorded in checkpoint metadata),
        # so state dicts stay the same whatever the normalisation.
        self.register_buffer("scale", 1.0 / std, persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)

    def forward(
        self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None
    ) -> Tuple[ImageList, Optional[List[Dict[str, Tensor]]]]:
        for i, image in enumerate(images):
            if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
                raise TypeError(
                    f"image {i}: expected a uint8 3 x H x W RGB tensor (the data loader's output), "
                    f"got {image.dtype} of shape {tuple(image.shape)}"
                )
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        d = self.size_divisible
        height = math.ceil(max(h for h, _ in sizes) / d) * d
        width = math.ceil(max(w for _, w in sizes) / d) * d
        batch = torch.empty(
            (len(images), 3, height, width),
            dtype=self.scale.dtype,
            device=self.scale.device,
            memory_format=self.memory_format,
        ).zero_()
        bgr = self.input_format.channel_order == "BGR"
        for image, slot, (h, w) in zip(images, batch, sizes):
            image = image.to(batch.device, non_blocking=True)
            torch.addcmul(self.shift, image.flip(0) if bgr else image, self.scale, out=slot[:, :h, :w])
        return ImageList(batch, sizes), targets

    def postprocess(
        self,
        result: List[Dict[str, Tensor]],
        image_shapes: List[Tuple[int, int]],
        original_image_sizes: List[Tuple[int, int]],
    ) -> List[Dict[str, Tensor]]:
        """Nothing was resized, so boxes are already in the given images' frame (and clipped to it)."""
        return result

    def extra_repr(self) -> str:
        fmt = self.input_format
        return (
            f"channel_order={fmt.channel_order}, pixel_mean={list(fmt.pixel_mean)}, "
            f"pixel_std={list(fmt.pixel_std)}, size_divisible={self.size_divisible}, no resize"
        )
