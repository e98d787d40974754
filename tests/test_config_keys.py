"""Every key of a schema is read by the code of its kind: a key no code reads is a promise the
config cannot keep. Each test runs the real entry point (training with its final evaluation) on a
tiny config while recording every key the code reads, then compares with the schema's leaves."""

import contextlib

from omegaconf import DictConfig, OmegaConf

from resnet_det.config import ClassificationConfig, DetectionConfig, load_config

# Keys the tiny runs below do not reach, each with the reason (the mode that reads it):
# {"key": "why"}. None today: every key is read whatever its value.
DETECTION_ONLY_IN_SOME_MODES: dict = {}
CLASSIFICATION_ONLY_IN_SOME_MODES: dict = {}


def _leaves(node: DictConfig, prefix: str = ""):
    """The schema's leaf keys; a free mapping (``datasets.custom``) counts as one leaf."""
    for key in node.keys():
        child = node._get_node(key)
        full = f"{prefix}{key}"
        if isinstance(child, DictConfig) and child._metadata.object_type not in (dict, None):
            yield from _leaves(child, full + ".")
        else:
            yield full


@contextlib.contextmanager
def recording_reads(monkeypatch):
    """The full keys of every read of a DictConfig value (attribute, item, ``get``, ``getattr``):
    all go through ``DictConfig._get_impl``; merges and YAML dumps do not."""
    seen = set()
    original = DictConfig._get_impl

    def recording(self, key, default_value, validate_key=True):
        seen.add(self._get_full_key(key))
        return original(self, key, default_value, validate_key)

    with monkeypatch.context() as m:
        m.setattr(DictConfig, "_get_impl", recording)
        yield seen


def _unread(schema, seen, allowed):
    leaves = set(_leaves(OmegaConf.structured(schema)))
    assert set(allowed) <= leaves, "the allow-list names keys that are not in the schema"
    read = {key for key in leaves if key in seen or any(s.startswith(key + ".") for s in seen)}
    return sorted(leaves - read - set(allowed))


def test_recording_sees_reads_and_not_dumps(monkeypatch):
    cfg = load_config(ClassificationConfig)
    with recording_reads(monkeypatch) as seen:
        OmegaConf.to_yaml(cfg, resolve=True)
        OmegaConf.merge(cfg, {"solver": {"max_iter": 3}})
        assert not seen
        cfg.solver.base_lr, getattr(cfg.model, "norm"), cfg.input.get("crop_size")  # noqa: B009  (each way of reading)
    assert {"solver.base_lr", "model.norm", "input.crop_size"} <= seen
    unread = _unread(ClassificationConfig, seen, {})
    assert "solver.max_iter" in unread and "solver.base_lr" not in unread


def test_every_detection_key_is_read(tmp_path, monkeypatch):
    from test_train_det import TINY, write_tiny_coco

    from resnet_det.engine.train_detection import train_detector
    from resnet_det.modeling import build_detector

    ann, images = write_tiny_coco(tmp_path / "data", n=2)
    overrides = [
        *TINY,
        "model.head=c4",
        "model.backbone.name=r18",
        f"datasets.custom.tiny.images={images}",
        f"datasets.custom.tiny.annotations={ann}",
        "datasets.train=[tiny]",
        "datasets.test=[tiny]",
        "solver.max_iter=1",
        "solver.batch_size=2",
        f"train.output_dir={tmp_path / 'run'}",
        "train.device=cpu",
    ]
    cfg = load_config(DetectionConfig, None, overrides)
    fpn = load_config(
        DetectionConfig, None, [*overrides, "model.head=fpn", "model.anchors.sizes=[[32],[64],[128],[256],[512]]"]
    )
    with recording_reads(monkeypatch) as seen:
        train_detector(cfg)
        build_detector(fpn, num_classes=3)  # the FPN head's own keys (fpn_channels, fc_dim)
    assert _unread(DetectionConfig, seen, DETECTION_ONLY_IN_SOME_MODES) == []


def test_every_classification_key_is_read(tmp_path, monkeypatch):
    from test_cls_training import make_learnable_folder, tiny_cfg

    from resnet_det.engine.train_classification import train_classifier

    data = make_learnable_folder(tmp_path / "data", per_class=2)
    cfg = tiny_cfg(
        data,
        tmp_path / "run",
        "model.name=cifar_r8",
        "solver.max_iter=1",
        "input.augment=imagenet",
        "input.scale_range=[16,20]",
        "input.test_resize=18",
    )
    with recording_reads(monkeypatch) as seen:
        train_classifier(cfg)
    assert _unread(ClassificationConfig, seen, CLASSIFICATION_ONLY_IN_SOME_MODES) == []
