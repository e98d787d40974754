"""Classification data: image folders, CIFAR-10 batches, the paper's transforms, loaders."""

from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import classification_cfg, make_cifar, make_image_folder, write_image

from resnet_det.data import build_classification_loaders, cifar, classification, imagefolder
from resnet_det.data import classification_transforms as transforms
from resnet_det.errors import ConfigError, DatasetError

MEAN, STD = [100.0, 110.0, 120.0], [50.0, 60.0, 70.0]


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_image_folder_lists_classes_in_name_order(tmp_path):
    make_image_folder(tmp_path / "train", {"zebra": 2, "ant": 3})
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "train" / "ant" / "nested" / "x.JPEG", 8, 8)
    paths, labels, classes = imagefolder.image_folder(tmp_path / "train")
    assert classes == ["ant", "zebra"]
    assert labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert all("/ant/" in p for p in paths[:4]) and paths[3].endswith("nested/x.JPEG")


def test_image_folder_errors_name_the_folder(tmp_path):
    make_image_folder(tmp_path / "train", {"cat": 1})
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(DatasetError, match=rf"class folder {tmp_path}/train/dog has no images .*remove the folder"):
        imagefolder.image_folder(tmp_path / "train")
    with pytest.raises(DatasetError, match=rf"image folder not found: {tmp_path}/val; put the images in {tmp_path}/"):
        imagefolder.image_folder(tmp_path / "val")


def test_cifar_batches_are_decoded_channel_major(tmp_path):
    make_cifar(tmp_path, per_batch=6)
    images, labels, names = cifar.load_cifar10(tmp_path, train=True)
    assert images.shape == (30, 32, 32, 3) and images.dtype == np.uint8
    assert images[4, 31, 0].tolist() == [4, 100, 200]  # R from the first 1024 bytes, then G, then B
    assert labels.tolist() == list(range(6)) * 5 and names[0] == "airplane" and len(names) == 10
    assert len(cifar.load_cifar10(tmp_path, train=False)[0]) == 6


def test_missing_or_damaged_cifar_says_what_to_do(tmp_path):
    message = rf"CIFAR-10 not found: .*; put the python version \(cifar-10-batches-py/\) under {tmp_path}/cifar10/"
    with pytest.raises(DatasetError, match=message):
        cifar.load_cifar10(tmp_path, train=True)
    folder = make_cifar(tmp_path)
    (folder / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DatasetError, match="data_batch_3 is not a CIFAR-10 python batch"):
        cifar.load_cifar10(tmp_path, train=True)


def test_holdout_split_is_fixed_and_disjoint():
    train, val = cifar.holdout_split(50, 5)
    assert len(train) == 45 and len(val) == 5 and not set(train) & set(val)
    assert np.array_equal(val, cifar.holdout_split(50, 5)[1])


def test_cifar_holdout_takes_validation_from_the_training_batches(tmp_path, monkeypatch):
    make_cifar(tmp_path, per_batch=10)
    monkeypatch.setattr(classification, "CIFAR10_HOLDOUT", 5)
    cfg = classification_cfg("data.dataset=cifar10", f"data.root={tmp_path}", "data.holdout_val=true")
    train, val, names = classification.build_classification_datasets(cfg)
    assert (len(train), len(val), len(names)) == (45, 5, 10)
    with pytest.raises(ConfigError, match="data.holdout_val applies to cifar10 only"):
        classification.build_classification_datasets(classification_cfg("data.dataset=shapes", "data.holdout_val=true"))


def test_cifar_train_transform_pads_crops_flips_and_normalises():
    image = np.full((32, 32, 3), 200, np.uint8)
    transform = transforms.CifarTrainTransform(32, MEAN, STD)
    outs = [transform(image, np.random.default_rng(s)) for s in range(20)]
    assert all(o.shape == (3, 32, 32) and o.dtype == torch.float32 for o in outs)
    assert outs[0][:, 16, 16].tolist() == pytest.approx([2.0, 1.5, 80 / 70])  # (200 - mean) / std
    padded = [(o[0] == -2.0).sum().item() for o in outs]  # zero padding normalises to -mean/std
    assert max(padded) > 0 and min(padded) < max(padded)
    assert torch.equal(transform(image, np.random.default_rng(3)), outs[3])


def test_imagenet_train_transform_scales_crops_and_changes_colour():
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3)).astype(np.uint8)
    transform = transforms.ImageNetTrainTransform(16, [20, 28], 0.4, MEAN, STD)
    a, b = transform(image, np.random.default_rng(1)), transform(image, np.random.default_rng(2))
    assert a.shape == b.shape == (3, 16, 16) and not torch.equal(a, b)
    assert torch.equal(a, transform(image, np.random.default_rng(1)))
    flat = np.full((30, 40, 3), 128, np.uint8)
    jittered = transforms.ImageNetTrainTransform(16, [20, 20], 0.4, [0, 0, 0], [1, 1, 1])(
        flat, np.random.default_rng(5)
    )
    assert not torch.allclose(jittered, torch.full_like(jittered, 128.0))


def test_imagenet_scale_augmentation_draws_every_shorter_side_of_the_range(monkeypatch):
    # The paper's [256, 480], inclusive at both ends, from the recipe through the builder: the
    # shorter sides the resize is asked for, over many samples (the image is 300 x 400).
    from resnet_det.config import ClassificationConfig, load_config

    recipe_path = Path(__file__).resolve().parents[1] / "configs/classification/imagenet_r50.yaml"
    recipe = load_config(ClassificationConfig, recipe_path)
    assert recipe.input.mean_subtraction == "per_pixel"
    transform, _ = transforms.build_classification_transforms(recipe.input, np.zeros((224, 224, 3), np.float32))
    sizes = []
    resize = transforms._resize_shorter

    def spy(image, size):
        sizes.append(size)
        return resize(image, size)

    monkeypatch.setattr(transforms, "_resize_shorter", spy)
    image = np.zeros((300, 400, 3), np.uint8)
    for seed in range(600):
        assert transform(image, np.random.default_rng(seed)).shape == (3, 224, 224)
    assert min(sizes) == 256 and max(sizes) == 480
    assert len(set(sizes)) > 150  # uniform over the 225 sizes, not a few fixed scales
    # And the resize is to that shorter side: a 300 x 400 image drawn at 256 is 256 x 341.
    assert resize(image, 256).shape == (256, 341, 3)


def test_per_pixel_mean_of_cifar_is_the_mean_image_of_the_training_set(tmp_path):
    make_cifar(tmp_path, per_batch=6)
    cfg = classification_cfg(
        "data.dataset=cifar10",
        f"data.root={tmp_path}",
        "input.mean_subtraction=per_pixel",
        "input.pixel_std=[2.0,2.0,2.0]",
    )
    train, val, _ = classification.build_classification_datasets(cfg)
    images, _, _ = cifar.load_cifar10(tmp_path, train=True)
    expected = images.astype(np.float64).mean(axis=0)
    assert train.transform.mean.shape == (32, 32, 3)
    assert np.allclose(train.transform.mean, expected)  # red: the mean of 0..5 = 2.5
    assert train.transform.channel_mean == pytest.approx((2.5, 100.0, 200.0))
    assert val.transform.mean is train.transform.mean or np.array_equal(val.transform.mean, train.transform.mean)
    # The test image minus the same mean image, over pixel_std: red k - 2.5 for test image k.
    image, _ = val[4]
    assert image[:, 7, 9].tolist() == pytest.approx([(4 - 2.5) / 2, 0.0, 0.0])


def test_per_pixel_cifar_transform_subtracts_the_mean_image_before_padding():
    # Paper order: the mean is subtracted from the 32 x 32 image, then 4 zero pixels are padded
    # (so the padding is the mean), then the random crop and the flip.
    mean = np.arange(32 * 32 * 3, dtype=np.float32).reshape(32, 32, 3) / 20
    image = np.full((32, 32, 3), 200, np.uint8)
    transform = transforms.CifarTrainTransform(32, mean, [2.0, 2.0, 2.0])
    centred = np.pad((200 - mean) / 2, ((4, 4), (4, 4), (0, 0)))
    windows = [centred[y : y + 32, x : x + 32] for y in range(9) for x in range(9)]
    windows += [w[:, ::-1] for w in windows]
    padded = 0
    for seed in range(20):
        out = transform(image, np.random.default_rng(seed)).permute(1, 2, 0).numpy()
        assert any(np.allclose(out, w) for w in windows), seed
        padded += int((out == 0).all(axis=2).sum())
    assert padded > 0  # some crops reached into the padding, which is exactly 0


def test_per_pixel_mean_of_a_folder_is_taken_at_the_test_geometry(tmp_path):
    make_image_folder(tmp_path / "train", {"a": 3, "b": 2}, size=12)
    make_image_folder(tmp_path / "val", {"a": 1, "b": 1}, size=12)
    cfg = classification_cfg(
        "data.dataset=folder",
        f"data.root={tmp_path}",
        "input.augment=imagenet",
        "input.crop_size=8",
        "input.test_resize=10",
        "input.scale_range=[10,12]",
        "input.mean_subtraction=per_pixel",
    )
    train, val, _ = classification.build_classification_datasets(cfg)
    crops = [transforms._center_crop(transforms._resize_shorter(train._read(i), 10), 8) for i in range(len(train))]
    assert np.allclose(train.transform.mean, np.mean(crops, axis=0), atol=1e-4)
    raw = transforms._center_crop(transforms._resize_shorter(val._read(0), 10), 8).astype(np.float32)
    expected = (raw - train.transform.mean) / np.array(cfg.input.pixel_std, np.float32)
    assert np.allclose(val[0][0].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    assert train[(0, 1)][0].shape == (3, 8, 8)
    with pytest.raises(ConfigError, match="input.mean_subtraction=per_image is not known"):
        transforms.build_classification_transforms(classification_cfg("input.mean_subtraction=per_image").input)


def test_ten_crop_is_corners_centre_and_their_flips():
    image = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    crops = transforms.TenCropTransform(None, 6, [0, 0, 0], [1, 1, 1])(image)
    assert crops.shape == (10, 3, 6, 6)
    as_hwc = torch.from_numpy(image).permute(2, 0, 1).float()
    assert torch.equal(crops[0], as_hwc[:, :6, :6]) and torch.equal(crops[3], as_hwc[:, 4:, 6:])
    assert torch.equal(crops[4], as_hwc[:, 2:8, 3:9])
    assert torch.equal(crops[5:], crops[:5].flip(-1))
    centre = transforms.CenterCropTransform(None, 6, [0, 0, 0], [1, 1, 1])(image)
    assert torch.equal(centre, crops[4])


def test_unknown_augmentation_is_a_config_error():
    with pytest.raises(ConfigError, match="input.augment=autoaugment is not known"):
        transforms.build_classification_transforms(classification_cfg("input.augment=autoaugment").input)


def test_folder_loaders_batch_resume_and_shard(tmp_path):
    make_image_folder(tmp_path / "train", {"a": 5, "b": 4})
    make_image_folder(tmp_path / "val", {"a": 2, "b": 3})
    cfg = classification_cfg("data.dataset=folder", f"data.root={tmp_path}", "input.crop_size=8", "solver.batch_size=4")
    train, val, names = build_classification_loaders(cfg)
    assert names == ["a", "b"]
    batches = _take(train, 6)
    images, labels = batches[0]
    assert images.shape == (4, 3, 8, 8) and images.dtype == torch.float32 and labels.dtype == torch.int64
    resumed = _take(build_classification_loaders(cfg, start_iter=4)[0], 2)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(resumed, batches[4:]))
    assert [labels.tolist() for _, labels in val] == [[0, 0, 1, 1], [1]]
    shard = build_classification_loaders(cfg, rank=1, world_size=2)[1]
    assert [labels.tolist() for _, labels in shard] == [[1, 1]]


def test_shapes_loaders_generate_the_dataset(tmp_path):
    cfg = classification_cfg(f"data.root={tmp_path}", "solver.batch_size=8")
    train, val, names = build_classification_loaders(cfg)
    assert names == ["circle", "rectangle", "triangle"] and (tmp_path / "shapes_cls").is_dir()
    images, labels = next(iter(train))
    assert images.shape == (8, 3, 32, 32) and set(labels.tolist()) <= {0, 1, 2}
    assert len(val.dataset) == 600


def test_missing_imagenet_and_folder_root_are_explained(tmp_path):
    with pytest.raises(DatasetError, match=rf"ImageNet not found: {tmp_path}/imagenet/train; put the ILSVRC2012"):
        build_classification_loaders(classification_cfg("data.dataset=imagenet", f"data.root={tmp_path}"))
    with pytest.raises(ConfigError, match="data.dataset=folder needs data.root"):
        build_classification_loaders(classification_cfg("data.dataset=folder"))


def test_unreadable_images_stop_or_are_skipped(tmp_path):
    make_image_folder(tmp_path / "train", {"a": 3, "b": 3})
    make_image_folder(tmp_path / "val", {"a": 1, "b": 1})
    (tmp_path / "train" / "a" / "1.png").write_bytes(b"")
    (tmp_path / "val" / "b" / "0.png").write_bytes(b"\x89PNG broken")
    base = ["data.dataset=folder", f"data.root={tmp_path}", "input.crop_size=8", "solver.batch_size=6"]
    train, _, _ = build_classification_loaders(classification_cfg(*base))
    with pytest.raises(DatasetError, match=r"cannot decode image .*/a/1.png .*or set data.skip_bad_images=true"):
        next(iter(train))
    train, val, _ = build_classification_loaders(classification_cfg(*base, "data.skip_bad_images=true"))
    images, labels = next(iter(train))
    assert images.shape[0] == 6  # the unreadable image was replaced
    assert [labels.tolist() for _, labels in val] == [[0]]  # the unreadable one is left out
