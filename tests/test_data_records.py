"""Compact records (``RecordStore``), the memory-mapped records cache, and loading at scale:
the same samples as record lists, bounded worker memory, rebuilds on change and on corruption,
and one parse for two "nodes" under gloo."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import coco_dict, make_coco, write_image

from resnet_det.data import catalog, records_cache
from resnet_det.data.build import DetectionTestDataset, DetectionTrainDataset, train_records
from resnet_det.data.coco import load_coco_json
from resnet_det.data.records import RecordStore
from resnet_det.data.sanitize import BadRecordPolicy, RecordSanitizer
from resnet_det.data.transforms import TrainAugmentation
from resnet_det.engine.data_scale import UndecodedTrainDataset, worker_growth_mb, write_coco_like
from resnet_det.errors import DatasetError

REPO = Path(__file__).resolve().parents[1]


def _records(n: int, boxes: int = 3, seed: int = 0, extras: bool = True) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        anns = []
        for j in range(int(rng.integers(0, boxes + 1))):
            x0, y0 = (float(v) for v in rng.uniform(0, 20, 2).round(3))
            ann = {"bbox": [x0, y0, x0 + 5.5, y0 + 7.25], "label": int(rng.integers(1, 5))}
            ann.update(iscrowd=int(j == 2), difficult=int(rng.random() < 0.3))
            if extras:
                ann["truncated"] = j % 2
            anns.append(ann)
        record = {"file_name": f"/data/images/é{i:05d}.jpg", "image_id": 10 * i + 7, "height": 30, "width": 40 + i % 3}
        record["annotations"] = anns
        if extras:
            record["voc_id"] = f"{i:06d}"
        out.append(record)
    return out


def _old_train_records(records, use_difficult=False, filter_empty=True):
    """train_records as it was on lists of dicts: the reference."""
    out = []
    for record in records:
        anns = [a for a in record["annotations"] if not a["iscrowd"] and (use_difficult or not a["difficult"])]
        if anns or not filter_empty:
            out.append({**record, "annotations": anns})
    return out


def test_a_store_gives_back_the_records_it_was_made_of():
    records = _records(60)
    store = RecordStore.from_records(iter(records))
    assert len(store) == 60 and store == records and store[-1] == records[-1] and store[5:8] == records[5:8]
    assert store.nbytes < 12_000  # 60 records, ~90 boxes
    assert RecordStore.concat([store, RecordStore.from_records(records[:7])]) == records + records[:7]
    for use_difficult in (False, True):
        for filter_empty in (False, True):
            assert train_records(store, use_difficult, filter_empty) == _old_train_records(
                records, use_difficult, filter_empty
            )
    with pytest.raises(IndexError):
        store[60]


def test_the_datasets_give_the_same_samples_from_a_store_as_from_the_records(tmp_path):
    records = _records(6, extras=False)
    for record in records:
        record["file_name"] = str(tmp_path / f"{record['image_id']}.png")
        write_image(Path(record["file_name"]), record["height"], record["width"], seed=record["image_id"])
    store = RecordStore.from_records(records)
    kept = _old_train_records(records)
    train = DetectionTrainDataset(train_records(store), TrainAugmentation((30,), 100, 0.0))
    assert len(train) == len(kept)
    for i, record in enumerate(kept):
        image, target = train[(i, 123)]
        assert tuple(image.shape[1:]) == (record["height"], record["width"])  # 30 px short side: no resize
        expected = np.array([a["bbox"] for a in record["annotations"]], dtype=np.float32).reshape(-1, 4)
        expected = np.minimum(expected, [record["width"], record["height"]] * 2)
        np.testing.assert_array_equal(target["boxes"].numpy(), expected)
        assert target["labels"].tolist() == [a["label"] for a in record["annotations"]]
        assert target["image_id"] == record["image_id"]
    test = DetectionTestDataset(store, 30, 100)
    for i, record in enumerate(records):
        _, info = test[i]
        assert (info["image_id"], info["file_name"], info["orig_size"]) == (
            record["image_id"],
            record["file_name"],
            (record["height"], record["width"]),
        )


class _ListTrainDataset(UndecodedTrainDataset):
    """The old way: the dataset holds the record dicts and reads each one at every sample."""

    def __init__(self, records):
        super().__init__(records)
        self.dicts = list(records)

    def __getitem__(self, key):
        record = self.dicts[key[0]]
        return np.array([a["bbox"] for a in record["annotations"]], dtype=np.float32), record["image_id"]


def _worker_growth_of_list_and_store() -> None:
    """Print the worker growth of a pass over record dicts (the control) and over a store."""
    records = _records(30_000, boxes=8, extras=False)
    store = train_records(RecordStore.from_records(records))
    keys = [(i, i) for i in range(len(store))]
    control = worker_growth_mb(_ListTrainDataset(store), keys, workers=2, batch_size=512)
    del records
    growth = worker_growth_mb(UndecodedTrainDataset(store), keys, workers=2, batch_size=512)
    print(json.dumps({"control": control, "growth": growth}))


def test_workers_do_not_copy_the_records_they_read():
    # In a fresh interpreter: a worker forked from the test session's process would also touch the
    # pages of everything the earlier tests left in it, which is not what this measures.
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])}
    code = "import test_data_records as t; t._worker_growth_of_list_and_store()"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    control, growth = figures["control"], figures["growth"]
    assert control > growth + 6, f"the measure must see the copies of record dicts ({control:.1f} MB)"
    assert growth < 8, f"a worker's private memory grew by {growth:.1f} MB over a pass (dicts: {control:.1f} MB)"


def _count_parses(monkeypatch) -> list:
    calls = []

    def counting(*args):
        calls.append(args[0])
        return load_coco_json(*args)

    monkeypatch.setattr(catalog, "load_coco_json", counting)
    return calls


def test_a_second_load_reads_the_cache_and_a_change_rebuilds_it(tmp_path, monkeypatch, caplog, records_cache_folder):
    json_path, images = make_coco(tmp_path)
    calls = _count_parses(monkeypatch)
    catalog.register_coco_instances("cached", images, json_path)
    first, meta = catalog.get_dataset("cached")
    second, meta2 = catalog.get_dataset("cached")
    assert len(calls) == 1 and second == first and not second.arrays["bbox"].flags.owndata  # memory-mapped
    assert meta2 == meta and meta2["label_to_category_id"] == {1: 3, 2: 7, 3: 11}
    assert [p.suffix for p in (records_cache_folder / "records").iterdir()] == [".records"]

    data = coco_dict()
    data["annotations"][0]["bbox"] = [11, 5, 20, 15]
    json_path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        changed, _ = catalog.get_dataset("cached")
    assert len(calls) == 2 and changed[0]["annotations"][0]["bbox"] == [11.0, 5.0, 31.0, 20.0]
    assert "stale" in caplog.text
    skip = BadRecordPolicy(**{**vars(BadRecordPolicy.default()), "missing_image": "skip"})
    catalog.get_dataset("cached", policy=skip)
    assert len(calls) == 3  # another policy: another cache file
    (images / "c.png").unlink()  # the missing-image policy decides otherwise now
    assert [r["image_id"] for r in catalog.get_dataset("cached", policy=skip)[0]] == [1, 2] and len(calls) == 4


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_a_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch, caplog, records_cache_folder, damage):
    json_path, images = make_coco(tmp_path)
    calls = _count_parses(monkeypatch)
    catalog.register_coco_instances(f"damaged_{damage}", images, json_path)
    good, _ = catalog.get_dataset(f"damaged_{damage}")
    (path,) = (records_cache_folder / "records").iterdir()
    data = bytearray(path.read_bytes())
    data = {
        "truncate": data[:-9],
        "flip": data[:-3] + bytes([data[-3] ^ 1]) + data[-2:],
        "empty": b"",
        "garbage": b"RDRECS1\n" + b"\xff" * 40,
    }[damage]
    damaged = path.with_suffix(".damaged")  # a new file: ``good`` maps the old one
    damaged.write_bytes(bytes(data))
    os.replace(damaged, path)
    with caplog.at_level(logging.WARNING):
        again, _ = catalog.get_dataset(f"damaged_{damage}")
    assert again == good and len(calls) == 2 and "corrupt" in caplog.text
    assert records_cache.read_cache(path, records_cache.content_key([json_path, images]))[0] == good


def test_without_a_cache_the_records_are_built_in_memory(tmp_path, monkeypatch):
    json_path, images = make_coco(tmp_path)
    monkeypatch.setenv("RESNET_DET_CACHE", "none")
    calls = _count_parses(monkeypatch)
    catalog.register_coco_instances("uncached", images, json_path)
    assert catalog.get_dataset("uncached")[0] == catalog.get_dataset("uncached")[0] and len(calls) == 2


def test_the_fast_coco_reader_agrees_with_pycocotools(tmp_path):
    """Polygons dropped before parsing, orjson: the boxes and their order are pycocotools'."""
    from pycocotools.coco import COCO

    path = write_coco_like(tmp_path / "instances.json", images=300, boxes=2000)
    records, meta = load_coco_json(path, tmp_path, RecordSanitizer(BadRecordPolicy.default()))
    coco = COCO(str(path))
    cat_of = meta["label_to_category_id"]
    records = list(records)
    assert len(records) == 300
    for record in records:
        anns = coco.imgToAnns[record["image_id"]]
        assert [
            [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns
        ] == [a["bbox"] for a in record["annotations"]]
        assert [a["category_id"] for a in anns] == [cat_of[a["label"]] for a in record["annotations"]]
        assert [a["iscrowd"] for a in anns] == [a["iscrowd"] for a in record["annotations"]]


def test_a_malformed_file_is_still_reported_at_its_own_line(tmp_path):
    json_path, images = make_coco(tmp_path)
    text = json_path.read_text().replace('"bbox": [\n    10', '"bbox": [\n    10,,')
    text = '{"segmentation": [[1, 2]],\n' + text[1:]
    json_path.write_text(text)
    line = text[: text.index(",,")].count("\n") + 1
    with pytest.raises(DatasetError, match=rf"annotations.json: line {line} column 8: malformed JSON"):
        load_coco_json(json_path, images, RecordSanitizer(BadRecordPolicy.default()))


def test_two_nodes_parse_once_and_read_the_same_records(tmp_path, records_cache_folder):
    """Two processes as two "nodes" (each LOCAL_RANK 0) sharing a cache folder, under gloo."""
    json_path, images = make_coco(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(REPO), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", LOCAL_RANK="0")
    cmd = [sys.executable, str(REPO / "tests" / "scripts" / "records_node.py"), str(json_path), str(images), str(out)]
    workers = [subprocess.Popen(cmd, env={**env, "RANK": str(r)}, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    errors = [w.communicate(timeout=120)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errors
    results = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert results[0] == results[1] and len(results[0]["records"]) == 3 and results[0]["memory_mapped"]
    assert sorted(p.name for p in out.glob("parsed-by-rank-*")) == ["parsed-by-rank-0"]


@pytest.mark.parametrize("chunk", [1, 100, 1 << 23])
def test_cutting_unused_fields_keeps_everything_else(tmp_path, monkeypatch, chunk):
    import orjson

    from resnet_det.data import coco

    path = write_coco_like(tmp_path / "instances.json", images=40, boxes=300)
    data = json.loads(path.read_text())
    data["images"][0]["file_name"] = 'x},{"area":1,"segmentation":[[1]]}.jpg'  # in a string: kept
    data["annotations"][0] = {"segmentation": [[1, 2]], "area": 3.5, **data["annotations"][0]}
    raw = json.dumps(data, separators=(",", ":")).encode()
    monkeypatch.setattr(coco, "_STRIP_CHUNK", chunk)
    unused = {"segmentation", "area", "coco_url", "flickr_url", "date_captured"}
    for ann in data["annotations"]:
        if not ann["iscrowd"]:  # an RLE segmentation (an object) is left to the parser
            ann.pop("segmentation")
        ann.pop("area")
    for img in data["images"]:
        for key in unused & set(img):
            img.pop(key)
    assert orjson.loads(coco._strip_unused(raw)) == data


def test_loaders_with_workers_freeze_the_parents_objects():
    import gc

    from omegaconf import OmegaConf

    from resnet_det.data.build import loader_options

    gc.unfreeze()
    try:
        loader_options(OmegaConf.create({"num_workers": 0, "pin_memory": False}))
        assert gc.get_freeze_count() == 0
        loader_options(OmegaConf.create({"num_workers": 2, "pin_memory": False}))
        assert gc.get_freeze_count() > 1000  # torch's objects, among others
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("trap", ["", "file_name", "nested"])
def test_parsing_in_parts_gives_what_one_parse_gives(tmp_path, monkeypatch, trap):
    import orjson

    from resnet_det.data import coco

    data = json.loads(write_coco_like(tmp_path / "instances.json", images=50, boxes=400).read_text())
    if trap == "file_name":  # a cut inside a string
        data["annotations"][100]["note"] = '},{"x":1},{' * 20
    if trap == "nested":  # the key inside another object first
        data = {"meta": {"annotations": [{"a": 1}, {"b": 2}] * 50}, **data}
    text = bytearray(json.dumps(data, separators=(",", ":")).encode())
    monkeypatch.setattr(coco, "_PARSE_CHUNK", 64)
    parses = []
    monkeypatch.setattr(coco.orjson, "loads", lambda b, loads=orjson.loads: parses.append(len(b)) or loads(b))
    parsed = coco._parse_in_parts(text)
    assert parsed == data and orjson.dumps(parsed) == orjson.dumps(data)  # also the key order
    if trap == "nested":
        assert parses[-1] == len(text)  # parsed whole
    elif trap == "file_name":
        assert 100 < len(parses) < 105  # in parts up to the string, then the rest at once
    else:
        assert len(parses) > 300 and max(parses) < len(text) / 10  # in parts


@pytest.mark.slow
def test_the_data_scale_benchmark_reports_its_figures_in_json(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "tools" / "benchmark.py"), "--only", "data-scale"]
    cmd += ["--images", "300", "--boxes", "2000", "--json", str(out)]
    done = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())["figures"]
    for name in ("load_s", "peak_rss_mb", "records_mb", "worker_growth_mb", "cached_load_s"):
        assert figures[f"data-scale/{name}"]["median"] > 0, name
    assert figures["data-scale/records_mb"]["median"] < 0.2  # 300 images, 2000 boxes: some 80 kB
    assert "data-scale/load_s" in done.stdout
