"""The config system: schema defaults, _base_ inheritance, overrides and their errors."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from resnet_det.config import ClassificationConfig, DetectionConfig, config_hash, load_config, save_config
from resnet_det.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _recipes(folder_glob):
    return sorted(p for p in CONFIGS.glob(folder_glob) if p.parent.name != "base")


@pytest.mark.parametrize("path", _recipes("*/*.yaml"), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_loads_against_its_schema(path):
    schema = ClassificationConfig if path.parent.name == "classification" else DetectionConfig
    cfg = load_config(schema, path)
    assert cfg.solver.base_lr > 0


def test_paper_coco_recipe_inherits_the_c4_base():
    cfg = load_config(DetectionConfig, CONFIGS / "coco/faster_rcnn_c4.yaml")
    assert cfg.model.head == "c4"
    assert cfg.model.backbone.name == "r101"
    assert cfg.model.rpn.post_nms_topk_test == 300
    assert list(cfg.input.min_size_train) == [600]
    assert cfg.solver.base_lr == 0.001 and list(cfg.solver.steps) == [240000] and cfg.solver.max_iter == 320000
    assert list(cfg.datasets.train) == ["coco_2017_train"]


def test_later_files_and_overrides_win(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("solver:\n  base_lr: 0.5\n  max_iter: 10\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\nsolver:\n  max_iter: 20\n")
    cfg = load_config(DetectionConfig, child, ["solver.batch_size=3", "input.min_size_train=[32,48]"])
    assert cfg.solver.base_lr == 0.5
    assert cfg.solver.max_iter == 20
    assert cfg.solver.batch_size == 3
    assert list(cfg.input.min_size_train) == [32, 48]


def test_unknown_key_in_file_names_the_key_and_a_close_match(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("solver:\n  base_rl: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*base_rl.*did you mean solver.base_lr"):
        load_config(DetectionConfig, bad)


def test_unknown_override_key_lists_close_matches():
    with pytest.raises(ConfigError, match=r"'solver.max_itr' does not exist; did you mean solver.max_iter"):
        load_config(DetectionConfig, None, ["solver.max_itr=5"])


def test_wrong_type_and_malformed_override():
    with pytest.raises(ConfigError, match="solver.max_iter"):
        load_config(DetectionConfig, None, ["solver.max_iter=many"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(DetectionConfig, None, ["solver.max_iter"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(DetectionConfig, tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("solver:\n  base_lr: [0.1\n")
    with pytest.raises(ConfigError, match=r"broken.yaml line \d+: not valid YAML"):
        load_config(DetectionConfig, broken)


def test_base_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(DetectionConfig, tmp_path / "a.yaml")


def test_custom_datasets_are_free_form_and_checked():
    cfg = load_config(
        DetectionConfig,
        None,
        ["datasets.custom.mine.images=/data/img", "datasets.custom.mine.annotations=/data/a.json"],
    )
    assert cfg.datasets.custom.mine.images == "/data/img"
    with pytest.raises(ConfigError, match="annotations"):
        load_config(DetectionConfig, None, ["datasets.custom.mine.images=/data/img"])


def test_saved_config_round_trips_and_hash_is_stable(tmp_path):
    cfg = load_config(ClassificationConfig, None, ["model.name=cifar_r56"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(ClassificationConfig, tmp_path / "config.yaml")
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(ClassificationConfig, None, ["model.name=cifar_r20"])) != config_hash(cfg)
