"""Detection transforms, samplers and loaders: shapes, dtypes, determinism, resume and sharding."""

import uuid

import numpy as np
import pytest
import torch
from data_fixtures import detection_cfg, make_coco

from resnet_det.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_dataset,
    register_coco_instances,
)
from resnet_det.data.samplers import InferenceSampler, TrainingBatchSampler
from resnet_det.data.transforms import TrainAugmentation, hflip, resize_scale, resize_shortest_edge
from resnet_det.errors import DatasetError


def _take(iterable, n):
    it = iter(iterable)
    return [next(it) for _ in range(n)]


# Transforms


def test_resize_scale_follows_the_shortest_side_unless_the_longest_exceeds_the_maximum():
    assert resize_scale(300, 400, 600, 1000) == 2.0
    assert resize_scale(100, 400, 600, 1000) == 2.5  # 400 * 6 > 1000
    image, scale = resize_shortest_edge(np.zeros((30, 40, 3), np.uint8), 60, 100)
    assert image.shape == (60, 80, 3) and scale == 2.0


def test_hflip_mirrors_boxes():
    image = np.zeros((10, 20, 3), np.uint8)
    flipped, boxes = hflip(image, np.array([[2.0, 1.0, 5.0, 4.0]], np.float32))
    assert boxes.tolist() == [[15.0, 1.0, 18.0, 4.0]]
    assert flipped.flags["C_CONTIGUOUS"]


def test_augmented_boxes_still_cover_the_object():
    image = np.zeros((40, 80, 3), np.uint8)
    image[10:20, 5:25] = 255  # the object: box [5, 10, 25, 20]
    augment = TrainAugmentation([60, 80], 200, hflip_prob=0.5)
    seen = set()
    for seed in range(12):
        out, boxes = augment(image, np.array([[5.0, 10.0, 25.0, 20.0]], np.float32), np.random.default_rng(seed))
        x0, y0, x1, y1 = boxes[0]
        assert out.shape[0] in (60, 80) and out.shape[1] == 2 * out.shape[0]
        assert (x1 - x0) * (y1 - y0) == pytest.approx(200 * (out.shape[0] / 40) ** 2)
        assert out[int(y0) + 1 : int(y1) - 1, int(x0) + 1 : int(x1) - 1].min() > 200  # white inside the box
        assert out.mean() == pytest.approx(255 * 200 / 3200, abs=3)  # nothing white outside it
        seen.add((out.shape[0], x0 < out.shape[1] / 2))
    assert len(seen) == 4  # both scales, flipped and not


# Samplers


def test_sampler_resumes_exactly_where_it_stopped():
    groups = [i % 3 == 0 for i in range(23)]
    full = _take(TrainingBatchSampler(23, 4, group_ids=groups, seed=7), 30)
    resumed = _take(TrainingBatchSampler(23, 4, group_ids=groups, seed=7, start_iter=17), 13)
    assert resumed == full[17:]
    assert _take(TrainingBatchSampler(23, 4, group_ids=groups, seed=8), 30) != full


def test_sampler_groups_by_aspect_ratio_and_covers_every_sample():
    groups = [int(i % 4 == 0) for i in range(40)]
    batches = _take(TrainingBatchSampler(40, 5, group_ids=groups, seed=0), 40)  # 5 epochs
    for batch in batches:
        assert len(batch) == 5 and len({groups[i] for i, _ in batch}) == 1
    counts = np.bincount([i for b in batches for i, _ in b], minlength=40)
    assert counts.min() >= 3 and counts.max() <= 6  # every sample about 5 times
    seeds = [s for b in batches for _, s in b]
    assert len(set(seeds)) == len(seeds)  # one augmentation seed per batch element


def test_sampler_gives_each_rank_a_distinct_equal_part_of_every_epoch():
    size, world = 10, 3  # 10 samples over 3 ranks: 4 each, 2 wrapped around
    samplers = [TrainingBatchSampler(size, 2, seed=1, rank=r, world_size=world) for r in range(world)]
    epoch = [[i for batch in _take(sampler, 2) for i, _ in batch] for sampler in samplers]
    assert [len(e) for e in epoch] == [4, 4, 4]
    assert set().union(*map(set, epoch)) == set(range(size))
    assert len(set(epoch[0]) & set(epoch[1])) <= 2


def test_inference_sampler_shards_contiguously():
    shards = [list(InferenceSampler(10, r, 3)) for r in range(3)]
    assert shards == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert len(InferenceSampler(2, 2, 3)) == 0


# Loaders


@pytest.fixture
def tiny_records(tmp_path):
    name = f"test_{uuid.uuid4().hex[:8]}"
    json_path, images_dir = make_coco(tmp_path)
    register_coco_instances(name, images_dir, json_path)
    return get_dataset(name)[0]


def _same(batches_a, batches_b):
    for (imgs_a, tgts_a), (imgs_b, tgts_b) in zip(batches_a, batches_b, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(imgs_a, imgs_b, strict=True))
        for a, b in zip(tgts_a, tgts_b, strict=True):
            assert torch.equal(a["boxes"], b["boxes"]) and a["image_id"] == b["image_id"]


def test_train_loader_yields_uint8_images_and_targets(tiny_records):
    cfg = detection_cfg("input.min_size_train=[32,48]", "input.max_size_train=100", "solver.batch_size=2")
    images, targets = next(iter(build_detection_train_loader(cfg, tiny_records)))
    assert len(images) == len(targets) == 2
    for image, target in zip(images, targets):
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
        assert min(image.shape[1:]) in (32, 48)
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
        assert target["labels"].dtype == torch.int64 and len(target["labels"]) == len(target["boxes"])
        assert target["image_id"] in (1, 2)  # image 5 has no boxes: filtered out
        assert len(target["boxes"]) == {1: 2, 2: 1}[target["image_id"]]  # the crowd region of image 2 is gone
        assert (target["boxes"][:, 2:] <= torch.tensor(image.shape[:0:-1])).all()


def test_train_loader_resumes_and_does_not_depend_on_workers(tiny_records):
    cfg = detection_cfg("input.min_size_train=[32,40,48]", "input.max_size_train=100", "solver.batch_size=2")
    full = _take(build_detection_train_loader(cfg, tiny_records), 6)
    _same(_take(build_detection_train_loader(cfg, tiny_records, start_iter=4), 2), full[4:])
    cfg.dataloader.num_workers = 2
    _same(_take(build_detection_train_loader(cfg, tiny_records), 6), full)


def test_train_loader_with_nothing_to_train_on_says_so(tiny_records):
    with pytest.raises(DatasetError, match="no training image has a box"):
        build_detection_train_loader(detection_cfg(), [r for r in tiny_records if r["image_id"] == 5])


def test_test_loader_keeps_order_and_reports_the_scale(tiny_records):
    cfg = detection_cfg("input.min_size_test=20", "input.max_size_test=1000", "test.batch_size=2")
    batches = list(build_detection_test_loader(cfg, tiny_records))
    infos = [info for _, batch_infos in batches for info in batch_infos]
    assert [len(images) for images, _ in batches] == [2, 1]
    assert [i["image_id"] for i in infos] == [1, 2, 5]
    assert infos[0]["orig_size"] == (40, 60) and infos[0]["scale"] == 0.5
    assert batches[0][0][0].shape == (3, 20, 30) and batches[0][0][0].dtype == torch.uint8
    assert infos[0]["file_name"] == tiny_records[0]["file_name"]
    loaders = [build_detection_test_loader(cfg, tiny_records, rank=r, world_size=2) for r in range(2)]
    shards = [[info["image_id"] for _, infos in loader for info in infos] for loader in loaders]
    assert shards == [[1, 2], [5]]
