"""The dataset registry: names -> functions that read a dataset into records; the built-ins.

A name is all a config needs (``datasets.train: [voc_0712_trainval]``); where the files live is
decided by the data root: an explicit ``root`` (``--data-root`` / ``cfg.datasets.root``), else the
``RESNET_DET_DATASETS`` environment variable, else ``./datasets``. Built in, in the standard
layouts under the root: ``coco_2017_{train,val}`` (``coco/{train2017,val2017}``,
``coco/annotations/instances_*2017.json``), ``voc_2007_{trainval,test}``, ``voc_2012_trainval``,
``voc_0712_trainval`` (``VOCdevkit/VOC2007|VOC2012``) and ``shapes_{train,val}`` (generated).
A user's own data is registered by ``register_coco_instances``, ``register_voc_style`` or
``register_yolo`` (one per format, see ``voc_style.py`` and ``yolo.py``), or from the config's
``datasets.custom`` (``format: coco|voc|yolo``) by ``register_from_config``.

``get_dataset`` returns ``(records, metadata)`` as the "Dataset records" contract of
docs/architecture.md says, after the bad-record policies of ``sanitize.py``; the records are a
``RecordStore`` (``records.py``: compact, shared by loader workers without copies), cached per
machine for the COCO-format datasets (``records_cache.py``); what they fixed or
skipped is in ``metadata["sanitize_counts"]`` (a ``SanitizeReport``: a dict of counts with a
``summary()`` line and ``to_dict()`` for ``data_report.json``).
"""

import functools
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from backbones import Registry
from resnet_det.data import records_cache
from resnet_det.data.coco import load_coco_json
from resnet_det.data.records import RecordStore
from resnet_det.data.sanitize import BadRecordPolicy, RecordSanitizer
from resnet_det.data.shapes import DETECTION_IMAGES, ensure_shapes_detection
from resnet_det.data.voc import VOC_CLASSES, load_voc_split
from resnet_det.data.voc_style import load_voc_style
from resnet_det.data.yolo import load_yolo
from resnet_det.errors import DatasetError

DATASETS_ENV = "RESNET_DET_DATASETS"

# loader_fn(root, sanitizer) -> (records, metadata read from the files, e.g. class_names).
LoaderFn = Callable[[Path, RecordSanitizer], Tuple[Iterable[dict], dict]]

# name -> (loader_fn, metadata given at registration).
DATASETS: Registry[Tuple[LoaderFn, dict]] = Registry(
    "dataset", DatasetError, hint="add your own data (coco, voc or yolo format) under datasets.custom in the config"
)


def dataset_root(root: Optional[os.PathLike] = None) -> Path:
    """The folder that holds the datasets: ``root``, else ``$RESNET_DET_DATASETS``, else ``./datasets``."""
    return Path(root or os.environ.get(DATASETS_ENV) or "datasets").expanduser()


def register_dataset(
    name: str, loader_fn: LoaderFn, cache_sources: Optional[Callable[[Path], Sequence[Path]]] = None, **metadata
) -> None:
    """Register ``loader_fn(root, sanitizer) -> (records, metadata)`` under ``name`` (in ``DATASETS``).

    ``metadata`` given here (e.g. ``evaluator="voc"``) is merged over what the loader returns.
    The loader should call ``sanitizer.unknown_category`` for boxes of categories it cannot map;
    everything else (ids, files, boxes) is checked on its records afterwards. ``records`` may be
    any iterable of record dicts (a generator is compacted as it goes). With ``cache_sources(root)``
    (the files and folders the records are made from), the records are cached and read back
    memory-mapped by later runs and the other processes of the machine (``records_cache``).
    """
    DATASETS.register(name, (loader_fn, metadata))
    _CACHE_SOURCES.pop(name, None)
    if cache_sources is not None:
        _CACHE_SOURCES[name] = cache_sources


# name -> cache_sources(root), for the datasets whose records are cached.
_CACHE_SOURCES: Dict[str, Callable[[Path], Sequence[Path]]] = {}


def list_datasets() -> List[str]:
    return DATASETS.names()


def get_dataset(
    name: str, root: Optional[os.PathLike] = None, policy=None, sanitizer: Optional[RecordSanitizer] = None
) -> Tuple[RecordStore, dict]:
    """Read dataset ``name`` under the data root into a ``RecordStore``; bad records are handled by
    ``policy``: a ``BadRecordPolicy``, or ``cfg.datasets`` itself; None = the schema's defaults. A
    ``sanitizer`` given instead (the data doctor's, which keeps what it saw) overrides ``policy``
    and reads the files themselves, never the cache: what it sees must be what the files hold."""
    loader_fn, registered = DATASETS.get(name)
    if sanitizer is not None:
        policy = sanitizer.policy
    elif policy is None:
        policy = BadRecordPolicy.default()
    elif not isinstance(policy, BadRecordPolicy):
        policy = BadRecordPolicy.from_config(policy)
    data_root = dataset_root(root)

    def build() -> Tuple[RecordStore, dict]:
        checker = sanitizer if sanitizer is not None else RecordSanitizer(policy)
        records, found = loader_fn(data_root, checker)
        metadata = {"name": name, **found, **registered}
        source = metadata.get("annotations_file", name)
        store = checker.clean(records, len(metadata["class_names"]), source)
        metadata["sanitize_counts"] = checker.report
        return store, metadata

    folder, sources_of = records_cache.cache_dir(), _CACHE_SOURCES.get(name)
    cached = sanitizer is None and sources_of is not None and folder is not None
    sources = sources_of(data_root) if cached else None
    if not sources or not all(Path(p).exists() for p in sources):
        return build()  # not cached, or a file is missing: the loader says which
    store, metadata = records_cache.load_or_build(folder, name, sources, policy, build)
    return store, {**metadata, "name": name, **registered}


def get_datasets(names: Sequence[str], root: Optional[os.PathLike] = None, policy=None) -> Tuple[RecordStore, dict]:
    """Several datasets with the same classes as one (e.g. ``datasets.train``); the metadata is the
    first dataset's, with ``name`` joined by ``+`` and the sanitize reports merged."""
    if not names:
        raise DatasetError("no dataset named: list at least one in datasets.train / datasets.test")
    records, metadata = get_dataset(names[0], root, policy)
    for name in names[1:]:
        more, meta = get_dataset(name, root, policy)
        if meta["class_names"] != metadata["class_names"]:
            raise DatasetError(
                f"datasets {metadata['name']} and {name} have different classes; train on datasets that share them"
            )
        records = RecordStore.concat([records, more])
        metadata["sanitize_counts"].merge(meta["sanitize_counts"])
        metadata["name"] = f"{metadata['name']}+{name}"
    return records, metadata


def require_path(path: Path, what: str, fix: str, is_dir: bool = False) -> None:
    """Raise ``DatasetError("<what> not found: <path>; <fix>")`` when ``path`` is absent."""
    if not (path.is_dir() if is_dir else path.is_file()):
        raise DatasetError(f"{what} not found: {path}; {fix} (or set --data-root / {DATASETS_ENV})")


def register_coco_instances(name: str, images_dir: os.PathLike, annotations_json: os.PathLike) -> None:
    """Register a user's COCO-format dataset (paths absolute or relative to the working directory)."""
    images_dir, annotations_json = Path(images_dir).resolve(), Path(annotations_json).resolve()
    files = {"annotations_file": str(annotations_json), "images_dir": str(images_dir)}

    def load(root: Path, sanitizer: RecordSanitizer):
        _require(name, "annotations", annotations_json)
        _require(name, "images", images_dir, is_dir=True)
        records, metadata = load_coco_json(annotations_json, images_dir, sanitizer)
        return records, {**metadata, "format": "coco"}

    _register_own(name, load, files, cache_sources=lambda root: [annotations_json, images_dir])


def register_voc_style(
    name: str,
    root: os.PathLike,
    split: Optional[str] = None,
    classes: Optional[os.PathLike] = None,
    images: Optional[os.PathLike] = None,
) -> None:
    """Register a user's VOC-style folder (``voc_style.py``): own classes from a names file
    (``classes``) or from the XML; ``split`` names ``ImageSets/Main/<split>.txt``, None = every XML."""
    files = {"voc_style_root": str(Path(root).resolve()), "split": split, "classes_file": _resolved(classes)}
    files["images_dir"] = _resolved(images)

    def load(_root: Path, sanitizer: RecordSanitizer):
        _require(name, "root", Path(files["voc_style_root"]), is_dir=True)
        if classes is not None:
            _require(name, "classes", Path(files["classes_file"]))
        return load_voc_style(files["voc_style_root"], sanitizer, split, files["classes_file"], files["images_dir"])

    _register_own(name, load, files)


def register_yolo(
    name: str, classes: os.PathLike, split: Optional[str] = None, images: Optional[os.PathLike] = None
) -> None:
    """Register a user's YOLO txt data set (``yolo.py``): ``classes`` an ultralytics data.yaml with
    ``split`` one of its keys, or a names file with ``images`` a folder or a list file."""
    files = {"classes_file": _resolved(classes), "split": split, "images_dir": _resolved(images)}

    def load(_root: Path, sanitizer: RecordSanitizer):
        _require(name, "classes", Path(files["classes_file"]))
        if images is not None:
            _require(name, "images", Path(files["images_dir"]), is_dir=None)
        return load_yolo(sanitizer, files["classes_file"], split, files["images_dir"])

    _register_own(name, load, files)


def _resolved(path: Optional[os.PathLike]) -> Optional[str]:
    return None if path is None else str(Path(path).resolve())


def _require(name: str, key: str, path: Path, is_dir: Optional[bool] = False) -> None:
    """``datasets.custom.<name>.<key>`` must exist (a folder, a file, or either for None)."""
    exists = path.exists() if is_dir is None else path.is_dir() if is_dir else path.is_file()
    if not exists:
        raise DatasetError(f"{key} of dataset '{name}' not found: {path}; fix datasets.custom.{name}.{key}")


def _register_own(
    name: str, load: LoaderFn, files: dict, cache_sources: Optional[Callable[[Path], Sequence[Path]]] = None
) -> None:
    """Registering the same name with the same files again is a no-op, so a config can be applied
    twice in one process (train, then evaluate)."""
    if name in DATASETS and all(DATASETS.get(name)[1].get(k) == v for k, v in files.items()):
        return
    register_dataset(name, load, cache_sources=cache_sources, **files)


def register_custom(name: str, entry) -> None:
    """Register one ``datasets.custom`` entry (a mapping of its fields, checked) by its ``format``."""
    if entry["format"] == "coco":
        register_coco_instances(name, entry["images"], entry["annotations"])
    elif entry["format"] == "voc":
        register_voc_style(name, entry["root"], entry["split"], entry["classes"], entry["images"])
    else:
        register_yolo(name, entry["classes"], entry["split"], entry["images"])


def register_from_config(datasets_cfg) -> None:
    """Register every ``datasets.custom.<name>`` entry of a config."""
    for name, entry in datasets_cfg.custom.items():
        register_custom(name, entry)


def _coco_2017_files(split: str, root: Path) -> List[Path]:
    """The annotation file and the images folder of COCO 2017 ``split`` under ``root``."""
    return [root / "coco" / "annotations" / f"instances_{split}2017.json", root / "coco" / f"{split}2017"]


def _coco_2017(split: str) -> LoaderFn:
    def load(root: Path, sanitizer: RecordSanitizer):
        coco = root / "coco"
        annotations, images = _coco_2017_files(split, root)
        require_path(annotations, "COCO annotations", f"download the COCO 2017 annotations and unzip them into {coco}/")
        require_path(images, "COCO images", f"download {split}2017.zip and unzip it into {coco}/", is_dir=True)
        return load_coco_json(annotations, images, sanitizer)

    return load


# What to download for each VOC (year, image set), for the "not found" message.
_VOC_ARCHIVES = {
    ("2007", "trainval"): "VOCtrainval_06-Nov-2007.tar",
    ("2007", "test"): "VOCtest_06-Nov-2007.tar",
    ("2012", "trainval"): "VOCtrainval_11-May-2012.tar",
}


def _voc(splits: Sequence[Tuple[str, str]]) -> LoaderFn:
    """A loader of the concatenated (year, image set) splits; ``year``, ``voc_root`` and
    ``image_set`` in the metadata are the last split's."""

    def load(root: Path, sanitizer: RecordSanitizer):
        records = []
        for year, image_set in splits:
            voc_root = root / "VOCdevkit" / f"VOC{year}"
            archive = _VOC_ARCHIVES[year, image_set]
            fix = f"download {archive} and extract it into {root}/ (it creates VOCdevkit/VOC{year})"
            require_path(voc_root / "ImageSets" / "Main" / f"{image_set}.txt", f"VOC{year} {image_set}", fix)
            records += load_voc_split(voc_root, image_set, sanitizer)
        metadata = {
            "class_names": list(VOC_CLASSES),
            "label_to_category_id": {i: i for i in range(1, len(VOC_CLASSES) + 1)},
            "evaluator": "voc",
            "year": year,
            "voc_root": str(voc_root.resolve()),
            "image_set": image_set,
        }
        return records, metadata

    return load


def _shapes(split: str) -> LoaderFn:
    def load(root: Path, sanitizer: RecordSanitizer):
        folder = ensure_shapes_detection(root)
        annotations = folder / "annotations" / f"instances_{split}.json"
        if not annotations.is_file():
            raise DatasetError(f"{annotations} is missing: {folder} is incomplete; delete it to generate it again")
        return load_coco_json(annotations, folder / split, sanitizer)

    return load


for _split in ("train", "val"):
    register_dataset(
        f"coco_2017_{_split}", _coco_2017(_split), cache_sources=functools.partial(_coco_2017_files, _split)
    )
register_dataset("voc_2007_trainval", _voc([("2007", "trainval")]))
register_dataset("voc_2007_test", _voc([("2007", "test")]))
register_dataset("voc_2012_trainval", _voc([("2012", "trainval")]))
register_dataset("voc_0712_trainval", _voc([("2007", "trainval"), ("2012", "trainval")]))
for _split in DETECTION_IMAGES:
    register_dataset(f"shapes_{_split}", _shapes(_split))
