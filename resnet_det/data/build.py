"""Detection data loaders: records in, batches of uint8 images and targets out.

The train loader yields ``(images, targets)``: lists of ``3 x H x W`` uint8 RGB tensors and dicts
``{"boxes": float32 N x 4 XYXY, "labels": int64 N, "image_id": int}``. The test loader yields
``(images, infos)`` with ``info = {"image_id", "orig_size": (h, w), "scale", "file_name"}``, in
the records' order, each rank taking a contiguous shard. Images are resized here, never in the
model (docs/architecture.md, "Detection batches").
"""

import gc
import logging
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from resnet_det.data.image_io import read_image_or_skip
from resnet_det.data.records import RecordStore, as_record_store
from resnet_det.data.samplers import InferenceSampler, TrainingBatchSampler
from resnet_det.data.sanitize import SKIP, BadRecordPolicy
from resnet_det.data.transforms import TrainAugmentation, clip_boxes, resize_shortest_edge
from resnet_det.errors import DatasetError
from resnet_det.utils.comm import per_process_batch_size

logger = logging.getLogger(__name__)

_CORRUPT_HINT = "or set datasets.corrupt_image=skip"
_REPLACEMENT_TRIES = 10


def train_records(
    records: Union[RecordStore, Sequence[dict]], use_difficult: bool = False, filter_empty: bool = True
) -> RecordStore:
    """Records with only the boxes to train on: crowd regions and (unless ``use_difficult``)
    difficult objects removed; with ``filter_empty``, images left without boxes dropped."""
    store = as_record_store(records)
    columns = store.arrays
    keep = (columns["iscrowd"] == 0) & (use_difficult | (columns["difficult"] == 0))
    images = np.arange(len(store))
    if filter_empty:
        kept_before = np.concatenate([[0], np.cumsum(keep)])
        offsets = columns["box_offsets"]
        images = images[kept_before[offsets[1:]] > kept_before[offsets[:-1]]]
    return store.select(images, keep)


def aspect_ratio_groups(records: RecordStore) -> List[int]:
    """0 for landscape (width >= height), 1 for portrait images."""
    return (records.arrays["width"] < records.arrays["height"]).astype(int).tolist()


def collate_lists(batch: list) -> Tuple[list, list]:
    """``[(image, target), ...]`` -> ``(images, targets)``; skipped samples (None) are left out."""
    batch = [item for item in batch if item is not None]
    return [item[0] for item in batch], [item[1] for item in batch]


def loader_options(dataloader_cfg) -> dict:
    """DataLoader options shared by every loader: workers, pinned memory on GPU only, and a
    generator of the loader's own.

    Starting a DataLoader draws a worker seed from its generator; from the global one, that draw
    would shift the training RNG by however many loaders were started, and a resumed run (which
    starts its loader after restoring the RNG) would no longer match an uninterrupted one. The
    augmentation is seeded per sample by the samplers, so this seed decides nothing else.
    """
    workers = int(dataloader_cfg.num_workers)
    if workers > 0:
        freeze_for_workers()
    return {
        "num_workers": workers,
        "persistent_workers": workers > 0,
        "pin_memory": bool(dataloader_cfg.pin_memory) and torch.cuda.is_available(),
        "generator": torch.Generator().manual_seed(0),
    }


def freeze_for_workers() -> None:
    """Move every object alive now out of the garbage collector's reach before workers fork.

    A forked worker's collector otherwise walks all the parent's objects (torch's, the model's)
    on its first full collection and writes into each one's header: every page holding them is
    copied into every worker, some 90 MB each after loading a COCO-sized file (the same
    copy-on-read as pytorch#13246, for objects that are not records). CPython's ``gc.freeze``
    is made for this; what it holds is alive for the whole run anyway.
    """
    gc.freeze()


def read_with_replacement(
    read: Callable[[int], Optional[np.ndarray]], index: int, rng: np.random.Generator, size: int
) -> Tuple[int, np.ndarray]:
    """``(index, image)``, where an unreadable (skipped) training image is replaced by a random other
    one drawn from the sample's own generator, so that the replacement is deterministic too."""
    for _ in range(_REPLACEMENT_TRIES):
        image = read(index)
        if image is not None:
            return index, image
        index = int(rng.integers(size))
    raise DatasetError(f"{_REPLACEMENT_TRIES} unreadable images in a row; check the dataset's images")


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class _DetectionImages(Dataset):
    """Decoding shared by the train and test datasets: skip policy and real image sizes.

    The records are a ``RecordStore``, read without building dicts, so that workers share its pages
    instead of copying them (``records.py``). With ``skip_corrupt``, ``unreadable`` flags each record
    whose image did not decode. It lives in shared memory, so the loader's worker processes set it
    and the main process reads it (``unreadable_files``).
    """

    def __init__(self, records: Union[RecordStore, Sequence[dict]], skip_corrupt: bool):
        self.records = as_record_store(records)
        self.skip_corrupt = skip_corrupt
        self.unreadable = torch.zeros(len(records) if skip_corrupt else 0, dtype=torch.bool).share_memory_()
        self._warned_size: set = set()

    def __len__(self) -> int:
        return len(self.records)

    def _read(self, index: int) -> Optional[np.ndarray]:
        file_name = self.records.file_name(index)
        image = read_image_or_skip(file_name, self.skip_corrupt, _CORRUPT_HINT)
        if image is None:
            self.unreadable[index] = True
        elif image.shape[:2] != self.records.image_size(index):
            if file_name not in self._warned_size:
                self._warned_size.add(file_name)
                height, width = self.records.image_size(index)
                logger.warning(
                    "%s is %dx%d but annotated as %dx%d; using the real size, boxes clipped to it "
                    "(%d such images in this process so far)",
                    file_name,
                    image.shape[1],
                    image.shape[0],
                    width,
                    height,
                    len(self._warned_size),
                )
        return image


class DetectionTrainDataset(_DetectionImages):
    """``dataset[(index, sample_seed)] -> (image, target)``, augmented with a seeded generator."""

    def __init__(
        self, records: Union[RecordStore, Sequence[dict]], augmentation: TrainAugmentation, skip_corrupt: bool = False
    ):
        super().__init__(records, skip_corrupt)
        self.augmentation = augmentation

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        rng = np.random.default_rng(seed)
        index, image = read_with_replacement(self._read, index, rng, len(self.records))
        bbox, label, _, _ = self.records.boxes(index)
        boxes = bbox.astype(np.float32)
        labels = label.astype(np.int64)
        height, width = image.shape[:2]
        boxes = clip_boxes(boxes, height, width)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        image, boxes = self.augmentation(image, boxes[keep], rng)
        target = {
            "boxes": torch.from_numpy(boxes.astype(np.float32)),
            "labels": torch.from_numpy(labels[keep]),
            "image_id": self.records.image_id(index),
        }
        return _to_tensor(image), target


class DetectionTestDataset(_DetectionImages):
    """``dataset[index] -> (image, info)`` resized for testing; None for a skipped image."""

    def __init__(
        self, records: Union[RecordStore, Sequence[dict]], min_size: int, max_size: int, skip_corrupt: bool = False
    ):
        super().__init__(records, skip_corrupt)
        self.min_size = min_size
        self.max_size = max_size

    def __getitem__(self, index: int):
        image = self._read(index)
        if image is None:
            return None
        resized, scale = resize_shortest_edge(image, self.min_size, self.max_size)
        info = {
            "image_id": self.records.image_id(index),
            "orig_size": image.shape[:2],
            "scale": scale,
            "file_name": self.records.file_name(index),
        }
        return _to_tensor(resized), info


def unreadable_files(datasets: Sequence[_DetectionImages]) -> List[str]:
    """The file names, sorted, of the images that ``datasets`` have skipped as undecodable so far
    (``datasets.corrupt_image=skip``), in this process and its loader workers."""
    return sorted({d.records.file_name(i) for d in datasets for i in d.unreadable.nonzero().flatten().tolist()})


def build_detection_train_loader(
    cfg,
    records: Union[RecordStore, Sequence[dict]],
    *,
    start_iter: int = 0,
    rank: int = 0,
    world_size: int = 1,
    batch_size: Optional[int] = None,
    filter_empty: bool = True,
) -> DataLoader:
    """An endless, resumable loader of augmented training batches for this rank.

    ``batch_size`` (per process) defaults to ``cfg.solver.batch_size // world_size``.
    """
    policy = BadRecordPolicy.from_config(cfg.datasets)
    records = train_records(records, cfg.datasets.use_difficult, filter_empty)
    if not records:
        raise DatasetError(
            "no training image has a box to train on (crowd and difficult boxes removed); check datasets.train"
        )
    augmentation = TrainAugmentation(cfg.input.min_size_train, cfg.input.max_size_train, cfg.input.hflip_prob)
    dataset = DetectionTrainDataset(records, augmentation, skip_corrupt=policy.corrupt_image == SKIP)
    sampler = TrainingBatchSampler(
        len(records),
        batch_size or per_process_batch_size(cfg.solver.batch_size, world_size),
        group_ids=aspect_ratio_groups(records) if cfg.dataloader.aspect_ratio_grouping else None,
        seed=cfg.train.seed,
        rank=rank,
        world_size=world_size,
        start_iter=start_iter,
    )
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_lists, **loader_options(cfg.dataloader))


def build_detection_test_loader(
    cfg,
    records: Union[RecordStore, Sequence[dict]],
    *,
    batch_size: Optional[int] = None,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """This rank's contiguous shard of ``records``, in order, resized to the test size.

    With ``datasets.corrupt_image=skip`` an unreadable image is left out of its batch (which may
    then be shorter, or empty).
    """
    policy = BadRecordPolicy.from_config(cfg.datasets)
    dataset = DetectionTestDataset(
        records, cfg.input.min_size_test, cfg.input.max_size_test, skip_corrupt=policy.corrupt_image == SKIP
    )
    return DataLoader(
        dataset,
        batch_size=batch_size or cfg.test.batch_size,
        sampler=InferenceSampler(len(records), rank, world_size),
        collate_fn=collate_lists,
        **loader_options(cfg.dataloader),
    )
