"""Configs as data: YAML recipes merged onto typed dataclass schemas with OmegaConf.

A recipe may name ``_base_: other.yaml`` (a path relative to itself, or a list of them); bases are
merged first, then the file, then ``key=value`` overrides from the command line. Unknown keys,
wrong types and missing files are ``ConfigError``s naming the file, the key and close matches; a
value outside a ``Literal``'s choices names them; a renamed key names its new name. Then
``validate.validate_config`` checks what types cannot, before anything is built.
"""

import difflib
import hashlib
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence, Type

import yaml
from omegaconf import DictConfig, LiteralNode, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from resnet_det.config.defaults import ClassificationConfig, DetectionConfig
from resnet_det.config.validate import validate_config
from resnet_det.errors import ConfigError
from resnet_det.utils.file_io import atomic_write_text

__all__ = [
    "ClassificationConfig",
    "DetectionConfig",
    "load_config",
    "save_config",
    "config_hash",
    "apply_overrides",
]

BASE_KEY = "_base_"
# Keys that were renamed: the old name in a user's config is an error that names the new one.
RENAMED = {"model.input": "model.input_format"}


def _read_yaml(path: Path, chain: Sequence[Path] = ()) -> dict:
    if path in chain:
        raise ConfigError(f"{path}: _base_ cycle through {' -> '.join(map(str, chain))}")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: give the path of a YAML recipe (see configs/)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)}); fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(data).__name__}")
    bases = data.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for base in bases:
        merged = _deep_merge(merged, _read_yaml((path.parent / base).resolve(), (*chain, path)))
    return _deep_merge(merged, data)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _close_matches(schema: DictConfig, dotted: str) -> str:
    keys = [k for k in _all_keys(schema)]
    matches = difflib.get_close_matches(dotted, keys, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(matches)}?" if matches else ""


def _all_keys(cfg, prefix: str = "") -> Iterable[str]:
    for k in cfg.keys():
        full = f"{prefix}{k}"
        yield full
        v = cfg._get_node(k)
        if (
            isinstance(v, DictConfig)
            and not OmegaConf.is_missing(cfg, k)
            and v._metadata.object_type not in (dict, None)
        ):
            yield from _all_keys(v, full + ".")


def _literal_choices(cfg: DictConfig, key: str) -> Optional[list]:
    """The choices of ``key`` when the schema types it as a ``Literal``, else None."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node.keys():
            return None
        node = node._get_node(part)
    return (
        [choice for choice in node.ref_type.__args__ if choice is not None] if isinstance(node, LiteralNode) else None
    )


def _refuse_renamed(source: str, key: str) -> None:
    for old, new in RENAMED.items():
        if key == old or key.startswith(f"{old}."):
            raise ConfigError(f"{source}: key '{key}' was renamed: use {new}{key[len(old) :]}")


def _dotted_keys(data: dict, prefix: str = "") -> Iterable[str]:
    for key, value in data.items():
        yield f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _dotted_keys(value, f"{prefix}{key}.")


def _merge_checked(schema: DictConfig, data, source: str) -> DictConfig:
    for key in _dotted_keys(data):
        _refuse_renamed(source, key)
    try:
        return OmegaConf.merge(schema, data)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        choices = _literal_choices(schema, key)
        if choices is not None:
            raise ConfigError(f"{source}: {key}={e.value!r}: use one of {', '.join(map(str, choices))}") from None
        msg = str(e).splitlines()[0]
        hint = _close_matches(schema, key) if "not in" in msg or "Key" in msg else ""
        raise ConfigError(f"{source}: key '{key}': {msg}{hint}") from None


def _key_exists(cfg: DictConfig, key: str) -> bool:
    node = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node.keys():
            return False
        node = node._get_node(part)
    return True


def _under_free_mapping(cfg: DictConfig, key: str) -> bool:
    """True when the nearest existing ancestor of ``key`` is a mapping that takes new keys
    (such as ``datasets.custom``), so the new entry is checked by the merge, not refused here."""
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        node = OmegaConf.select(cfg, ".".join(parts[:n]), default=None)
        if isinstance(node, DictConfig):
            return node._metadata.object_type in (dict, None)
    return False


def apply_overrides(cfg: DictConfig, overrides: Sequence[str], source: str = "command line") -> DictConfig:
    """Apply ``key=value`` strings (values parsed as YAML) to a structured config."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: override '{item}' is not key=value (e.g. solver.base_lr=0.01)")
        key, value = item.split("=", 1)
        _refuse_renamed(source, key)
        if not _key_exists(cfg, key) and not _under_free_mapping(cfg, key):
            raise ConfigError(f"{source}: config key '{key}' does not exist{_close_matches(cfg, key)}")
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        nested = parsed
        for part in reversed(key.split(".")):
            nested = {part: nested}
        try:
            cfg = OmegaConf.merge(cfg, nested)
        except OmegaConfBaseException as e:
            choices = _literal_choices(cfg, key)
            if choices is not None:
                raise ConfigError(f"{source}: {key}={parsed!r}: use one of {', '.join(map(str, choices))}") from None
            raise ConfigError(f"{source}: {key}={value}: {str(e).splitlines()[0]}") from None
    return cfg


def load_config(
    schema: Type = DetectionConfig,
    path: Optional[os.PathLike] = None,
    overrides: Sequence[str] = (),
) -> DictConfig:
    """Defaults of ``schema``, then the YAML at ``path`` (with its bases), then overrides; validated."""
    cfg = OmegaConf.structured(schema)
    if path is not None:
        cfg = _merge_checked(cfg, _read_yaml(Path(path).resolve()), str(path))
    cfg = apply_overrides(cfg, overrides)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{path or 'config'}: required key(s) not set: {', '.join(missing)}")
    validate_config(cfg)
    return cfg


def save_config(cfg: DictConfig, path: os.PathLike) -> None:
    """Write the fully resolved config (what the run really used) atomically."""
    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def config_hash(cfg: DictConfig) -> str:
    """A short, stable fingerprint of a resolved config, for reports."""
    return hashlib.sha256(OmegaConf.to_yaml(cfg, resolve=True, sort_keys=True).encode()).hexdigest()[:12]
