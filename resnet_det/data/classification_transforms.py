"""The paper's classification transforms, and the per-pixel mean image some of them subtract.

Transforms return float ``C x H x W`` tensors, the mean subtracted and divided by
``cfg.input.pixel_std`` (0..255 scale, RGB). The mean is ``cfg.input.pixel_mean`` per channel, or
with ``input.mean_subtraction=per_pixel`` (the paper's, sections 3.4 and 4.2) the training set's
mean image at ``crop_size``:

- ``cifar`` (section 4.2): 4-pixel zero padding, a random crop, a horizontal flip (per pixel: the
  mean image is subtracted first, so the padding is the mean, as in the paper's order);
- ``imagenet`` (section 3.4): shorter side drawn from ``scale_range``, a random crop and flip,
  brightness/contrast/saturation jitter in random order and AlexNet's PCA lighting (as
  fb.resnet.torch, which the paper's models were retrained with);
- testing: shorter side resized (imagenet) then the centre crop, or the 10 crops (4 corners and the
  centre, and their flips) stacked as ``10 x C x H x W``.

A training transform draws from the generator it is given (seeded per sample), so a resumed run
sees exactly the same batches.
"""

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from resnet_det.errors import ConfigError, DatasetError

__all__ = [
    "CifarTrainTransform",
    "ImageNetTrainTransform",
    "CenterCropTransform",
    "TenCropTransform",
    "build_classification_transforms",
    "mean_image",
]

# The per-pixel mean of an image folder is estimated on this many training images, evenly spread
# (ImageNet's 1.28M would take an epoch of decoding); CIFAR-10's is computed on all of them.
MEAN_IMAGE_SAMPLES = 10000
MEAN_SUBTRACTION = ("per_channel", "per_pixel")

# AlexNet's PCA lighting: eigenvalues (0..255 scale) and eigenvectors of ImageNet's RGB covariance.
_LIGHTING_STD = 0.1
_EIGVAL = np.array([0.2175, 0.0188, 0.0045], dtype=np.float32) * 255
_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]], dtype=np.float32
)
_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def mean_image(dataset, crop_size: int, resize: Optional[int]) -> np.ndarray:
    """The mean ``crop_size x crop_size x 3`` image (float32, 0..255) of a ``ClassificationDataset``'s images,
    each taken as the test transform sees it (shorter side to ``resize``, centre crop); over at
    most ``MEAN_IMAGE_SAMPLES`` images evenly spread, the same every run."""
    images = dataset.images
    if isinstance(images, np.ndarray) and images.shape[1:3] == (crop_size, crop_size) and resize is None:
        return images.mean(axis=0, dtype=np.float64).astype(np.float32)
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), MEAN_IMAGE_SAMPLES)).round().astype(int))
    total, count = np.zeros((crop_size, crop_size, 3), np.float64), 0
    for index in picks:
        image = dataset._read(int(index))
        if image is None:  # skipped (data.skip_bad_images)
            continue
        if resize:
            image = _resize_shorter(image, resize)
        total += _center_crop(image, crop_size)
        count += 1
    if count == 0:
        raise DatasetError("no readable training image to compute the per-pixel mean from; check the training folder")
    return (total / count).astype(np.float32)


def _pad_to(image: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (centred) so that both sides are at least ``size``."""
    dh, dw = max(size - image.shape[0], 0), max(size - image.shape[1], 0)
    if dh or dw:
        image = cv2.copyMakeBorder(image, dh // 2, dh - dh // 2, dw // 2, dw - dw // 2, cv2.BORDER_CONSTANT, value=0)
    return image


def _random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    image = _pad_to(image, size)
    y = int(rng.integers(image.shape[0] - size + 1))
    x = int(rng.integers(image.shape[1] - size + 1))
    return image[y : y + size, x : x + size]


def _center_crop(image: np.ndarray, size: int) -> np.ndarray:
    image = _pad_to(image, size)
    y, x = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[y : y + size, x : x + size]


def _resize_shorter(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = size / min(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image if new == (w, h) else cv2.resize(image, new, interpolation=cv2.INTER_LINEAR)


def _maybe_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return image[:, ::-1] if rng.random() < 0.5 else image


class _Normalize:
    """``mean``: 3 values (per channel) or a ``crop x crop x 3`` mean image (per pixel)."""

    def __init__(self, mean, std: Sequence[float]):
        self.mean = np.array(mean, dtype=np.float32)
        self.std = np.array(std, dtype=np.float32)

    @property
    def per_pixel(self) -> bool:
        return self.mean.ndim == 3

    @property
    def channel_mean(self) -> Tuple[float, float, float]:
        """The mean per channel: what a detector fine-tuned from these weights subtracts."""
        return tuple(float(v) for v in self.mean.reshape(-1, 3).mean(axis=0))

    def tensor(self, image: np.ndarray, centred: bool = False) -> torch.Tensor:
        """``H x W x 3`` (0..255, or ``centred``: the mean already subtracted) -> normalised
        float32 ``3 x H x W``."""
        out = image.astype(np.float32) if centred else image.astype(np.float32) - self.mean
        out = out / self.std
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


class CifarTrainTransform(_Normalize):
    """Zero-pad 4 pixels on each side, random ``crop_size`` crop, horizontal flip."""

    def __init__(self, crop_size: int, mean, std, padding: int = 4):
        super().__init__(mean, std)
        self.crop_size = crop_size
        self.padding = padding

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        p = self.padding
        if self.per_pixel:  # subtract the mean image first: the zero padding is then the mean
            image = _center_crop(image, self.crop_size).astype(np.float32) - self.mean
        image = cv2.copyMakeBorder(image, p, p, p, p, cv2.BORDER_CONSTANT, value=0)
        return self.tensor(_maybe_flip(_random_crop(image, self.crop_size, rng), rng), centred=self.per_pixel)


class ImageNetTrainTransform(_Normalize):
    """Scale augmentation, random crop and flip, colour jitter and PCA lighting."""

    def __init__(self, crop_size: int, scale_range: Sequence[int], color_jitter: float, mean, std):
        super().__init__(mean, std)
        self.crop_size = crop_size
        self.scale_range = (int(scale_range[0]), int(scale_range[1]))
        self.color_jitter = color_jitter

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        image = _resize_shorter(image, int(rng.integers(self.scale_range[0], self.scale_range[1] + 1)))
        image = _maybe_flip(_random_crop(image, self.crop_size, rng), rng).astype(np.float32)
        if self.color_jitter > 0:
            image = _color_jitter(image, self.color_jitter, rng)
        image = image + _EIGVEC @ (rng.normal(0, _LIGHTING_STD, 3).astype(np.float32) * _EIGVAL)
        return self.tensor(np.clip(image, 0, 255))


def _color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation, each scaled by ``1 +- strength``, in random order."""
    for op in rng.permutation(3):
        alpha = 1.0 + rng.uniform(-strength, strength)
        gray = image @ _GRAY
        if op == 0:
            image = image * alpha
        elif op == 1:
            image = image * alpha + gray.mean() * (1 - alpha)
        else:
            image = image * alpha + gray[..., None] * (1 - alpha)
    return image


class CenterCropTransform(_Normalize):
    """Shorter side to ``resize`` (None: as it is), then the centre ``crop_size`` crop."""

    def __init__(self, resize: Optional[int], crop_size: int, mean, std):
        super().__init__(mean, std)
        self.resize = resize
        self.crop_size = crop_size

    def __call__(self, image: np.ndarray, rng=None) -> torch.Tensor:
        if self.resize:
            image = _resize_shorter(image, self.resize)
        return self.tensor(_center_crop(image, self.crop_size))


class TenCropTransform(CenterCropTransform):
    """The 4 corner crops and the centre crop, and their flips: ``10 x 3 x crop x crop``."""

    def __call__(self, image: np.ndarray, rng=None) -> torch.Tensor:
        if self.resize:
            image = _resize_shorter(image, self.resize)
        image = _pad_to(image, self.crop_size)
        s, (h, w) = self.crop_size, image.shape[:2]
        corners = [(0, 0), (0, w - s), (h - s, 0), (h - s, w - s), ((h - s) // 2, (w - s) // 2)]
        crops = [image[y : y + s, x : x + s] for y, x in corners]
        return torch.stack([self.tensor(c) for c in crops + [c[:, ::-1] for c in crops]])


def build_classification_transforms(input_cfg, mean_image: Optional[np.ndarray] = None):
    """``(train_transform, test_transform)`` for ``input.augment`` (cifar | imagenet); with
    ``input.mean_subtraction=per_pixel``, ``mean_image`` (see :func:`mean_image`) is subtracted."""
    if input_cfg.mean_subtraction not in MEAN_SUBTRACTION:
        raise ConfigError(
            f"input.mean_subtraction={input_cfg.mean_subtraction} is not known; use {' or '.join(MEAN_SUBTRACTION)}"
        )
    if input_cfg.mean_subtraction == "per_pixel":
        if mean_image is None or mean_image.shape != (input_cfg.crop_size, input_cfg.crop_size, 3):
            size = input_cfg.crop_size
            raise ValueError(f"per-pixel mean subtraction needs a {size}x{size}x3 mean image")
        mean = mean_image
    else:
        mean = input_cfg.pixel_mean
    std, crop = input_cfg.pixel_std, input_cfg.crop_size
    if input_cfg.augment == "cifar":
        train, resize = CifarTrainTransform(crop, mean, std), None
    elif input_cfg.augment == "imagenet":
        train = ImageNetTrainTransform(crop, input_cfg.scale_range, input_cfg.color_jitter, mean, std)
        resize = input_cfg.test_resize
    else:
        raise ConfigError(f"input.augment={input_cfg.augment} is not known; use cifar or imagenet")
    test = (TenCropTransform if input_cfg.ten_crop_test else CenterCropTransform)(resize, crop, mean, std)
    return train, test
