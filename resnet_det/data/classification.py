"""Classification data for pretraining backbones: the datasets of ``cfg.data`` and their loaders.

Sources: an image folder (``data/imagefolder.py``; the built-in shapes set, ImageNet, a user's
folder) decoded with OpenCV, and CIFAR-10's pickle batches (``data/cifar.py``); the paper's
transforms are in ``data/classification_transforms.py``. As for detection, a training sample is
``dataset[(index, sample_seed)]`` and its augmentation is drawn from a generator seeded by it, so a
resumed run sees exactly the same batches.
"""

from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from resnet_det.data.build import loader_options, read_with_replacement
from resnet_det.data.catalog import dataset_root, require_path
from resnet_det.data.cifar import holdout_split, load_cifar10
from resnet_det.data.classification_transforms import build_classification_transforms, mean_image
from resnet_det.data.image_io import read_image_or_skip
from resnet_det.data.imagefolder import image_folder
from resnet_det.data.samplers import InferenceSampler, TrainingBatchSampler
from resnet_det.data.shapes import ensure_shapes_classification
from resnet_det.errors import ConfigError, DatasetError
from resnet_det.utils.comm import per_process_batch_size

__all__ = [
    "ClassificationDataset",
    "build_classification_datasets",
    "build_classification_loaders",
    "classification_train_loader",
]

CIFAR10_HOLDOUT = 5000  # the paper's 45k/5k train/val split


class ClassificationDataset(Dataset):
    """``dataset[(index, sample_seed)]`` (training) or ``dataset[index]`` -> ``(image tensor, label)``.

    ``images`` are file paths (decoded on access) or an ``N x H x W x 3`` uint8 array. With
    ``skip_bad``, an unreadable file is replaced in training and left out (None) in testing.
    """

    def __init__(self, images: Union[Sequence[str], np.ndarray], labels: np.ndarray, transform, skip_bad: bool = False):
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
        batch_size=per_process_batch_size(cfg.solver.batch_size, world_size),
        sampler=InferenceSampler(len(val_set), rank, world_size),
        collate_fn=collate_skipping_none,
        **loader_options(cfg.dataloader),
    )
    return train_loader, val_loader, class_names


def classification_train_loader(cfg, train_set: ClassificationDataset, *, start_iter: int, rank: int, world_size: int):
    """The endless train loader of this rank from ``start_iter`` on, over an existing train set
    (a resumed run does not compute its mean image again)."""
    batch_size = per_process_batch_size(cfg.solver.batch_size, world_size)
    sampler = TrainingBatchSampler(
        len(train_set), batch_size, seed=cfg.train.seed, rank=rank, world_size=world_size, start_iter=start_iter
    )
    options = loader_options(cfg.dataloader)
    return DataLoader(train_set, batch_sampler=sampler, collate_fn=collate_skipping_none, **options)
