"""Classification data for pretraining backbones: image folders, CIFAR-10, and the paper's transforms.

Sources: an ImageFolder layout (``<split>/<class>/*.jpg``; the built-in shapes set, ImageNet, a
user's folder) decoded with OpenCV, and CIFAR-10's python pickle batches. Transforms return float
``C x H x W`` tensors, the mean subtracted and divided by ``cfg.input.pixel_std`` (0..255 scale,
RGB). The mean is ``cfg.input.pixel_mean`` per channel, or with ``input.mean_subtraction=per_pixel``
(the paper's, sections 3.4 and 4.2) the training set's mean image at ``crop_size``:

- ``cifar`` (section 4.2): 4-pixel zero padding, a random crop, a horizontal flip (per pixel: the
  mean image is subtracted first, so the padding is the mean, as in the paper's order);
- ``imagenet`` (section 3.4): shorter side drawn from ``scale_range``, a random crop and flip,
  brightness/contrast/saturation jitter in random order and AlexNet's PCA lighting (as
  fb.resnet.torch, which the paper's models were retrained with);
- testing: shorter side resized (imagenet) then the centre crop, or the 10 crops (4 corners and the
  centre, and their flips) stacked as ``10 x C x H x W``.

As for detection, a training sample is ``dataset[(index, sample_seed)]`` and its augmentation is
drawn from a generator seeded by it, so a resumed run sees exactly the same batches.
"""

from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from backbones.errors import UnsafeFileError
from backbones.serialization import load_pickle

from resnet_det.data.build import loader_options, read_with_replacement
from resnet_det.data.catalog import dataset_root, require_path
from resnet_det.data.image_io import read_image_or_skip
from resnet_det.data.samplers import InferenceSampler, TrainingBatchSampler, batch_size_per_process
from resnet_det.data.shapes import ensure_shapes_classification
from resnet_det.errors import ConfigError, DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
CIFAR10_HOLDOUT = 5000  # the paper's 45k/5k train/val split
# The per-pixel mean of an image folder is estimated on this many training images, evenly spread
# (ImageNet's 1.28M would take an epoch of decoding); CIFAR-10's is computed on all of them.
MEAN_IMAGE_SAMPLES = 10000
MEAN_SUBTRACTION = ("per_channel", "per_pixel")
_HOLDOUT_SEED = 0  # fixed, so every run holds out the same images
_CIFAR_FIX = "download CIFAR-10 (python version) again"

# AlexNet's PCA lighting: eigenvalues (0..255 scale) and eigenvectors of ImageNet's RGB covariance.
_LIGHTING_STD = 0.1
_EIGVAL = np.array([0.2175, 0.0188, 0.0045], dtype=np.float32) * 255
_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]], dtype=np.float32
)
_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def image_folder(split_dir: Path) -> Tuple[List[str], np.ndarray, List[str]]:
    """``(paths, labels, class_names)`` of ``<split_dir>/<class>/**/<image>``; classes sorted by name."""
    if not split_dir.is_dir():
        raise DatasetError(f"image folder not found: {split_dir}; put the images in {split_dir}/<class name>/")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not classes:
        raise DatasetError(f"{split_dir} has no class folders; put the images in {split_dir}/<class name>/")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(
            str(p) for p in (split_dir / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not files:
            raise DatasetError(
                f"class folder {split_dir / name} has no images (.jpg, .png, ...); add images or remove the folder"
            )
        paths += files
        labels += [label] * len(files)
    return paths, np.array(labels, dtype=np.int64), classes


def _unpickle(path: Path) -> dict:
    """A CIFAR-10 batch: numpy arrays and plain data only; a pickle that would run code is refused."""
    try:
        return load_pickle(path, encoding="bytes", trustable=False)
    except UnsafeFileError:
        raise
    except OSError as e:
        raise DatasetError(f"cannot read {path} ({e.strerror}); {_CIFAR_FIX}") from None
    except Exception as e:  # unpickling can fail in many ways on a damaged file
        raise DatasetError(f"{path} is not a CIFAR-10 python batch ({type(e).__name__}); {_CIFAR_FIX}") from None


def _cifar_batch(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """One pickled batch: ``b"data"`` (N x 3072 uint8, each row R, G then B planes) and ``b"labels"``."""
    batch = _unpickle(path)
    try:
        data, labels = batch[b"data"], np.asarray(batch[b"labels"], dtype=np.int64)
    except (TypeError, KeyError, ValueError):
        data = labels = None
    valid = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == (3072,)
    if not (valid and labels.shape == (len(data),) and ((labels >= 0) & (labels <= 9)).all()):
        raise DatasetError(f"{path}: expected b'data' (N x 3072 uint8) and N b'labels' in 0..9; {_CIFAR_FIX}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar10(root: Path, train: bool) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """``(images N x 32 x 32 x 3 uint8 RGB, labels int64, class_names)`` from ``<root>/cifar10/cifar-10-batches-py``."""
    folder = root / "cifar10" / "cifar-10-batches-py"
    fix = f"put the python version (cifar-10-batches-py/) under {root / 'cifar10'}/"
    require_path(folder, "CIFAR-10", fix, is_dir=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = zip(*(_cifar_batch(folder / name) for name in names))
    meta = _unpickle(folder / "batches.meta")
    try:
        class_names = [name.decode() for name in meta[b"label_names"]]
    except (TypeError, KeyError, AttributeError, UnicodeDecodeError):
        class_names = []
    if len(class_names) != 10:
        raise DatasetError(f"{folder / 'batches.meta'}: expected 10 b'label_names'; {_CIFAR_FIX}")
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels), class_names


def holdout_split(size: int, holdout: int) -> Tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, val)`` indices: ``holdout`` random samples for validation, the same every run."""
    order = np.random.default_rng(_HOLDOUT_SEED).permutation(size)
    return np.sort(order[holdout:]), np.sort(order[:holdout])


class ClassificationDataset(Dataset):
    """``dataset[(index, sample_seed)]`` (training) or ``dataset[index]`` -> ``(image tensor, label)``.

    ``images`` are file paths (decoded on access) or an ``N x H x W x 3`` uint8 array. With
    ``skip_bad``, an unreadable file is replaced in training and left out (None) in testing.
    """

    def __init__(
        self, images: Union[Sequence[str], np.ndarray], labels: np.ndarray, transform, skip_bad: bool = False
    ):
        self.images = images
        self.labels = labels
        self.transform = transform
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.labels)

    def _read(self, index: int) -> Optional[np.ndarray]:
        if isinstance(self.images, np.ndarray):
            return self.images[index]
        return read_image_or_skip(self.images[index], self.skip_bad, "or set data.skip_bad_images=true")

    def __getitem__(self, key):
        if isinstance(key, tuple):
            rng = np.random.default_rng(key[1])
            index, image = read_with_replacement(self._read, key[0], rng, len(self))
            return self.transform(image, rng), int(self.labels[index])
        image = self._read(key)
        return None if image is None else (self.transform(image, None), int(self.labels[key]))


def build_classification_datasets(cfg) -> Tuple[ClassificationDataset, ClassificationDataset, List[str]]:
    """``(train_set, val_set, class_names)`` for ``cfg.data.dataset``: shapes | cifar10 | imagenet | folder."""
    data = cfg.data
    if data.holdout_val and data.dataset != "cifar10":
        raise ConfigError(f"data.holdout_val applies to cifar10 only (data.dataset={data.dataset}); set it to false")
    if data.dataset == "cifar10":
        root = dataset_root(data.root)
        images, labels, class_names = load_cifar10(root, train=True)
        if data.holdout_val:
            train_idx, val_idx = holdout_split(len(labels), CIFAR10_HOLDOUT)
            val_images, val_labels = images[val_idx], labels[val_idx]
            images, labels = images[train_idx], labels[train_idx]
        else:
            val_images, val_labels, _ = load_cifar10(root, train=False)
        return _with_transforms(
            cfg.input, ClassificationDataset(images, labels, None), ClassificationDataset(val_images, val_labels, None)
        ) + (class_names,)
    if data.dataset == "shapes":
        folder = ensure_shapes_classification(dataset_root(data.root))
    elif data.dataset == "imagenet":
        folder = dataset_root(data.root) / "imagenet"
        fix = f"put the ILSVRC2012 images in {folder}/{{train,val}}/<class>/*.JPEG"
        require_path(folder / data.train_split, "ImageNet", fix, is_dir=True)
    elif data.dataset == "folder":
        if not data.root:
            raise ConfigError("data.dataset=folder needs data.root: the folder that holds train/ and val/")
        folder = Path(data.root).expanduser()
    else:
        raise ConfigError(f"data.dataset={data.dataset} is not known; use shapes, cifar10, imagenet or folder")
    train_paths, train_labels, class_names = image_folder(folder / data.train_split)
    val_paths, val_labels, val_classes = image_folder(folder / data.val_split)
    if val_classes != class_names:
        raise DatasetError(
            f"{folder / data.val_split} has other class folders than {folder / data.train_split}; "
            "give both the same classes"
        )
    return _with_transforms(
        cfg.input,
        ClassificationDataset(train_paths, train_labels, None, data.skip_bad_images),
        ClassificationDataset(val_paths, val_labels, None, data.skip_bad_images),
    ) + (class_names,)


def _with_transforms(input_cfg, train_set: ClassificationDataset, val_set: ClassificationDataset):
    per_pixel = input_cfg.mean_subtraction == "per_pixel"
    resize = input_cfg.test_resize if input_cfg.augment == "imagenet" else None
    mean = mean_image(train_set, input_cfg.crop_size, resize) if per_pixel else None
    train_set.transform, val_set.transform = build_classification_transforms(input_cfg, mean)
    return train_set, val_set


def mean_image(dataset: ClassificationDataset, crop_size: int, resize: Optional[int]) -> np.ndarray:
    """The mean ``crop_size x crop_size x 3`` image (float32, 0..255) of ``dataset``'s images,
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


def collate_skipping_none(batch: list):
    """Stack ``(image, label)`` pairs, leaving out skipped (None) samples; an all-skipped batch is
    ``(empty tensor, empty labels)``."""
    batch = [item for item in batch if item is not None]
    if not batch:
        return torch.empty(0), torch.empty(0, dtype=torch.int64)
    return default_collate(batch)


def build_classification_loaders(cfg, *, start_iter: int = 0, rank: int = 0, world_size: int = 1):
    """``(train_loader, val_loader, class_names)``: an endless resumable train loader of this rank's
    batches ``(images B x C x H x W, labels)`` and its shard of the validation set, in order."""
    train_set, val_set, class_names = build_classification_datasets(cfg)
    train_loader = classification_train_loader(cfg, train_set, start_iter=start_iter, rank=rank, world_size=world_size)
    val_loader = DataLoader(
        val_set,
        batch_size=batch_size_per_process(cfg.solver.batch_size, world_size),
        sampler=InferenceSampler(len(val_set), rank, world_size),
        collate_fn=collate_skipping_none,
        **loader_options(cfg.dataloader),
    )
    return train_loader, val_loader, class_names


def classification_train_loader(cfg, train_set: ClassificationDataset, *, start_iter: int, rank: int, world_size: int):
    """The endless train loader of this rank from ``start_iter`` on, over an existing train set
    (a resumed run does not compute its mean image again)."""
    batch_size = batch_size_per_process(cfg.solver.batch_size, world_size)
    sampler = TrainingBatchSampler(
        len(train_set), batch_size, seed=cfg.train.seed, rank=rank, world_size=world_size, start_iter=start_iter
    )
    options = loader_options(cfg.dataloader)
    return DataLoader(train_set, batch_sampler=sampler, collate_fn=collate_skipping_none, **options)


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
