"""Batch samplers: infinite and resumable for training, fixed and sharded for inference.

Training is counted in iterations, so the training sampler is an endless stream of batches: epoch
``e`` is a permutation seeded by ``(seed, e)``, split across ranks (every rank gets a distinct,
equally long part), optionally grouped by aspect ratio (landscape vs portrait, as torchvision's
``GroupedBatchSampler`` and detectron2's ``AspectRatioGroupedDataset``) so that padding a batch
wastes little. Each batch element is ``(index, sample_seed)``: the dataset seeds its augmentation
with ``sample_seed``, derived from ``(seed, rank, iteration, position)``, so a batch is the same
whatever the number of workers. ``start_iter=k`` replays the stream of indices without loading
anything and starts at batch ``k``: a resumed run sees exactly the batches it would have seen.
"""

import itertools
import math
from collections import defaultdict
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
from torch.utils.data import Sampler


def sample_seed(seed: int, rank: int, iteration: int, position: int) -> int:
    """The augmentation seed of one batch element (32 well-mixed bits)."""
    return int(np.random.SeedSequence([seed, rank, iteration, position]).generate_state(1)[0])


class TrainingBatchSampler(Sampler):
    """Endless batches of ``(index, sample_seed)`` pairs for one rank, starting at ``start_iter``.

    ``group_ids[i]`` (e.g. 0 for landscape, 1 for portrait images) keeps every batch within one
    group; None puts all samples in one group.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        group_ids: Optional[Sequence[int]] = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_iter: int = 0,
    ):
        if size <= 0:
            raise ValueError("TrainingBatchSampler needs at least one sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.size = size
        self.batch_size = batch_size
        self.group_ids = list(group_ids) if group_ids is not None else [0] * size
        if len(self.group_ids) != size:
            raise ValueError(f"{len(self.group_ids)} group ids for {size} samples")
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_iter = start_iter

    def _indices(self) -> Iterator[int]:
        """This rank's endless stream of indices, epoch after epoch."""
        per_rank = math.ceil(self.size / self.world_size)
        for epoch in itertools.count():
            order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            # Wrap around so that every rank gets per_rank indices (as DistributedSampler pads).
            yield from np.resize(order, per_rank * self.world_size)[self.rank :: self.world_size].tolist()

    def _batches(self) -> Iterator[List[int]]:
        pending = defaultdict(list)
        for index in self._indices():
            bucket = pending[self.group_ids[index]]
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        batches = itertools.islice(self._batches(), self.start_iter, None)
        for iteration, batch in enumerate(batches, start=self.start_iter):
            yield [(index, sample_seed(self.seed, self.rank, iteration, j)) for j, index in enumerate(batch)]


class InferenceSampler(Sampler):
    """Indices ``0..size-1`` in order, split into contiguous shards (sizes differ by at most 1)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        shard, extra = divmod(size, world_size)
        start = rank * shard + min(rank, extra)
        self._range = range(start, start + shard + (rank < extra))

    def __iter__(self) -> Iterator[int]:
        return iter(self._range)

    def __len__(self) -> int:
        return len(self._range)
