"""Pretrained weights: reading every accepted form into our parameter names, and loading them.

Accepted forms:

- ``"imagenet"``: torchvision's published ImageNet weights for the depth (r18 .. r152), through the
  torch.hub cache (``torch.hub.get_dir()/checkpoints``); offline, put the file there by hand.
- a torchvision state dict (``.pth``), laid out as torchvision's ResNet (stride in the 3x3).
- MSRA's original models as distributed for detectron2 (``R-50.pkl``): caffe2 blobs with BatchNorm
  folded into a scale and a shift, stride in the first 1x1, BGR input on 0..255 without scaling;
  the Caffe ``conv1`` bias (``conv1_b``) folded into the shift of the BN after it.
- a checkpoint of our own training, ``{"model": state dict, "meta": {...}}``, whose
  ``meta.kind`` names an entry of ``CHECKPOINT_KINDS``: a function that turns its state dict into
  the backbone's names. ``classification`` is built in (its state dict is the classifier's);
  ``resnet_det.modeling`` registers ``detection``, since only the detection layer knows where a
  detector keeps its backbone.

Each form also records how its images were normalised (``InputFormat``) and the model options it
was made with, which the builders follow for the options a user leaves unset.
"""

import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import torch
import torchvision
from torch import nn

from .errors import BackboneError, UnsafeFileError
from .registry import Registry
from .serialization import load_pickle, torch_load

logger = logging.getLogger(__name__)

ACCEPTED = (
    "accepted are 'imagenet', a torchvision state dict (.pth), an MSRA/caffe2 model (.pkl) "
    "or a checkpoint of our own training"
)
_BN_COUNTER = "num_batches_tracked"  # BatchNorm's bookkeeping, not a weight
HEAD = "fc."  # the classifier head, replaced when fine-tuning for another number of classes
# Options that change what the weights compute; a model built for them follows them.
ARCH_OPTIONS = ("shortcut", "stride_in_1x1")


@dataclass(frozen=True)
class InputFormat:
    """How the images given to the model were normalised: ``(x - pixel_mean) / pixel_std`` per
    channel, ``x`` on the 0..255 scale, channels in ``channel_order``."""

    channel_order: str  # "RGB" | "BGR"
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]

    def __post_init__(self):
        mean, std = tuple(map(float, self.pixel_mean)), tuple(map(float, self.pixel_std))
        if self.channel_order not in ("RGB", "BGR") or len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise BackboneError(
                f"input format {self.channel_order!r} mean {mean} std {std}: channel_order must be RGB "
                "or BGR, pixel_mean and pixel_std three numbers each (std > 0)"
            )
        object.__setattr__(self, "pixel_mean", mean)
        object.__setattr__(self, "pixel_std", std)

    def to_dict(self) -> dict:
        """The form checkpoints record (``meta["input_format"]``)."""
        return {
            "channel_order": self.channel_order,
            "pixel_mean": list(self.pixel_mean),
            "pixel_std": list(self.pixel_std),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "InputFormat":
        return cls(data["channel_order"], tuple(data["pixel_mean"]), tuple(data["pixel_std"]))


TORCHVISION_INPUT = InputFormat("RGB", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
MSRA_INPUT = InputFormat("BGR", (103.530, 116.280, 123.675), (1.0, 1.0, 1.0))

IMAGENET_WEIGHTS = {
    "r18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "r34": torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
    "r50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    "r101": torchvision.models.ResNet101_Weights.IMAGENET1K_V1,
    "r152": torchvision.models.ResNet152_Weights.IMAGENET1K_V1,
}


@dataclass(frozen=True)
class Weights:
    """Weights read from one source, in our parameter names, before any model is built."""

    source: str  # the file they were read from
    state_dict: Mapping[str, torch.Tensor]
    input_format: InputFormat
    options: Mapping[str, Any]  # model options they were made with (num_classes, stride_in_1x1, ...)
    arch: Optional[str] = None  # the model name, where the file records it (our checkpoints)
    # Norm layers given as a folded scale and shift (MSRA): loaded with mean 0 and variance 1 - eps,
    # so that the layer computes exactly x * scale + shift.
    folded_norms: frozenset = field(default_factory=frozenset)
    # Our name -> the file's own, where they differ (MSRA blobs), so that logs name what the file holds.
    file_names: Mapping[str, str] = field(default_factory=dict)


@dataclass
class LoadReport:
    """What ``load_weights`` loaded, and what it could not."""

    source: str
    input_format: InputFormat  # how images must be normalised for these weights
    missing: list[str]  # the model's weights that the file does not have (left at initialisation)
    unexpected: list[str]  # the file's weights that the model has no place for (not used)


def read_weights(weights: Union[str, os.PathLike], arch: Optional[str] = None) -> Weights:
    """Read ``weights`` ("imagenet" or a file) for the model ``arch`` (needed for "imagenet")."""
    source = _read_imagenet(arch) if str(weights) == "imagenet" else _read_file(Path(weights))
    _check_arch(source, arch)
    return source


def load_weights(model: nn.Module, weights: Union[str, os.PathLike, Weights]) -> LoadReport:
    """Load ``weights`` into ``model`` and set ``model.input_format`` to theirs.

    Weights are matched by name: the model's weights the file lacks stay at their initialisation
    (``LoadReport.missing``), the file's that the model has no place for are left out
    (``LoadReport.unexpected``; those of modules a backbone leaves out on purpose, its
    ``dropped_modules`` such as the classifier head, are not reported). A weight of another shape is
    an error, except the classifier head's, which is then left at its initialisation: a new head
    for another number of classes. A checkpoint recording another model than ``model.arch`` is an
    error.
    """
    arch = getattr(model, "arch", None)
    target = arch or type(model).__name__
    source = weights if isinstance(weights, Weights) else read_weights(weights, arch)
    _check_arch(source, arch)
    state, own = _fitted_state(model, source), model.state_dict()
    new_head = False
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            if not key.startswith(HEAD):
                raise BackboneError(
                    f"{source.source}: {key} has shape {tuple(value.shape)} there but "
                    f"{tuple(own[key].shape)} in {target}: these weights were made for another architecture "
                    "(check the model name and its options)"
                )
            new_head = True
    if new_head:
        state = {key: value for key, value in state.items() if not key.startswith(HEAD)}
    result = model.load_state_dict(state, strict=False)
    model.input_format = source.input_format

    dropped = tuple(f"{name}." for name in getattr(model, "dropped_modules", ()))
    file_head = [key for key in source.state_dict if key.startswith(HEAD)] if new_head else []
    unused = [key for key in result.unexpected_keys if not key.startswith(dropped)]
    left_out = [key for key in result.unexpected_keys if key.startswith(dropped) and key in source.state_dict]
    report = LoadReport(
        source=source.source,
        input_format=source.input_format,
        missing=[key for key in result.missing_keys if not key.endswith(_BN_COUNTER)],
        unexpected=[key for key in unused if not key.endswith(_BN_COUNTER)] + file_head,
    )
    _log(report, target, new_head, left_out, source.file_names)
    return report


def _log(report: LoadReport, target: str, new_head: bool, left_out: list, file_names: Mapping[str, str]) -> None:
    """The outcome, naming weights as the file does (``fc1000_w``, not ``fc.weight``)."""

    def named(keys):
        return ", ".join(file_names.get(key, key) for key in keys)

    logger.info("loaded %s into %s (input %s)", report.source, target, report.input_format)
    if new_head:
        logger.info("%s: classifier head of another size in %s: initialised, not loaded", target, report.source)
    if left_out:
        logger.info(
            "%s: weights in %s of the modules it leaves out, not used: %s", target, report.source, named(left_out)
        )
    missing = [key for key in report.missing if not (new_head and key.startswith(HEAD))]
    unexpected = [key for key in report.unexpected if not (new_head and key.startswith(HEAD))]
    if missing:
        logger.warning("%s: weights not in %s, left at initialisation: %s", target, report.source, ", ".join(missing))
    if unexpected:
        logger.warning("%s: weights in %s not used: %s", target, report.source, named(unexpected))


def _check_arch(source: Weights, arch: Optional[str]) -> None:
    if source.arch is not None and arch is not None and source.arch != arch:
        raise BackboneError(
            f"{source.source}: a checkpoint of {source.arch}, which does not load into {arch}: "
            f"build {source.arch} or choose weights made for {arch}"
        )


def _fitted_state(model: nn.Module, source: Weights) -> dict[str, torch.Tensor]:
    """The state dict to load: folded norms get the variance that makes ``var + eps`` exactly 1."""
    state = dict(source.state_dict)
    modules = dict(model.named_modules())
    for name in source.folded_norms:
        key = f"{name}.running_var"
        eps = getattr(modules.get(name), "eps", None)
        if key in state and eps is not None:
            state[key] = torch.full_like(state[key], 1.0 - eps)
    return state


def _read_imagenet(arch: Optional[str]) -> Weights:
    if arch not in IMAGENET_WEIGHTS:
        raise BackboneError(
            f"no ImageNet weights for '{arch}': torchvision publishes them for "
            f"{', '.join(IMAGENET_WEIGHTS)}; pass a weights file instead"
        )
    state, file = hub_state_dict(IMAGENET_WEIGHTS[arch].url)
    return Weights(str(file), state, TORCHVISION_INPUT, _torchvision_options(state))


def hub_state_dict(url: str) -> tuple[dict, Path]:
    """The state dict published at ``url``, through the torch.hub cache, and the cached file;
    offline, the error names the file and the folder to put it in."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = folder / os.path.basename(url)
    try:
        state = torch.hub.load_state_dict_from_url(
            url, model_dir=str(folder), map_location="cpu", check_hash=True, weights_only=True
        )
    except OSError as e:  # urllib's URLError included: no network
        reason = str(getattr(e, "reason", e)).splitlines()[0]
        raise BackboneError(
            f"{file.name} not in {folder} and it cannot be downloaded ({reason}; offline?): "
            f"download {url} and put it there"
        ) from None
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        raise BackboneError(f"{file} cannot be read (damaged?): delete it and download {url} again") from None
    return state, file


def _read_file(path: Path) -> Weights:
    if not path.is_file():
        raise BackboneError(f"weights file {path} not found; {ACCEPTED}")
    if path.suffix == ".pkl":
        return _read_caffe2(path)
    content = _unpickle(path, torch_load)
    if _is_state_dict(content):
        return Weights(str(path), dict(content), TORCHVISION_INPUT, _torchvision_options(content))
    if isinstance(content, Mapping) and "model" in content and isinstance(content.get("meta"), Mapping):
        return _read_checkpoint(path, content)
    raise BackboneError(
        f"{path} is not a weights file (it holds a {type(content).__name__} of other things); {ACCEPTED}"
    )


def _unpickle(path: Path, load):
    try:
        return load(path)
    except UnsafeFileError:
        raise
    except Exception as e:  # a damaged or foreign file fails in many ways, all meaning the same here
        why = "empty file" if path.stat().st_size == 0 else f"unreadable: {type(e).__name__}"
        raise BackboneError(f"{path} is not a weights file ({why}); {ACCEPTED}") from None


def _is_state_dict(content) -> bool:
    return (
        isinstance(content, Mapping)
        and len(content) > 0
        and all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in content.items())
    )


def _torchvision_options(state: Mapping[str, torch.Tensor]) -> dict:
    return {"stride_in_1x1": False, **_num_classes(state)}


def _read_caffe2(path: Path) -> Weights:
    content = _unpickle(path, lambda file: load_pickle(file, encoding="latin1"))  # MSRA's are Python 2 pickles
    blobs = content.get("blobs", content) if isinstance(content, Mapping) else {}
    arrays = {name: value for name, value in blobs.items() if isinstance(value, np.ndarray)}
    if not arrays:
        raise BackboneError(f"{path} is not a weights file (no caffe2 blobs in it); {ACCEPTED}")
    arrays = _fold_conv_biases(path, arrays)
    state, folded, names = {}, set(), {}
    for blob, array in arrays.items():
        key = _caffe2_to_torchvision(blob)
        names[key] = blob
        state[key] = torch.as_tensor(np.ascontiguousarray(array))
        if key.endswith(".weight") and blob.endswith("_bn_s"):
            norm = key[: -len(".weight")]
            folded.add(norm)
            state[f"{norm}.running_mean"] = torch.zeros_like(state[key])
            state[f"{norm}.running_var"] = torch.ones_like(state[key])  # made 1 - eps when loaded
    options = {"stride_in_1x1": True, **_num_classes(state)}
    return Weights(str(path), state, MSRA_INPUT, options, folded_norms=frozenset(folded), file_names=names)


def _fold_conv_biases(path: Path, arrays: dict) -> dict:
    """Conv biases folded into the shift of the BN after them: ``s * (W x + b) + t = s * W x + (t + s b)``.

    MSRA's Caffe ResNets have a bias on ``conv1`` (``conv1_b`` in ``R-50.pkl``), before
    ``bn_conv1``/``scale_conv1``, whose folded scale and shift are ``res_conv1_bn_s``/``_b``; and
    Detectron's converter (``pickle_caffe_blobs.py``) gives every other conv a zero bias. Our
    convolutions have none, so each ``<conv>_b`` is folded, which computes what the Caffe model
    computes (detectron2 leaves ``conv1_b`` unused instead, reporting ``stem.conv1.bias``).
    """
    arrays, done = dict(arrays), []
    for blob in sorted(arrays):
        conv = blob[: -len("_b")]
        norm = "res_conv1_bn" if conv == "conv1" else f"{conv}_bn"
        if not blob.endswith("_b") or f"{conv}_w" not in arrays or f"{norm}_s" not in arrays:
            continue
        bias, scale, shift = (arrays[name].reshape(-1) for name in (blob, f"{norm}_s", f"{norm}_b"))
        if not bias.shape == scale.shape == shift.shape:
            continue  # not a per-channel bias: left as it is, and reported as not used when loaded
        arrays[f"{norm}_b"] = (shift + scale * bias).astype(arrays[f"{norm}_b"].dtype)
        del arrays[blob]
        done.append(blob)
    if done:
        logger.info("%s: conv biases folded into the shift of the BN after them: %s", path, ", ".join(done))
    return arrays


def _num_classes(state: Mapping[str, torch.Tensor]) -> dict:
    return {"num_classes": state[f"{HEAD}weight"].shape[0]} if f"{HEAD}weight" in state else {}


_CAFFE2_STEM = {
    "conv1_w": "conv1.weight",
    "res_conv1_bn_s": "bn1.weight",
    "res_conv1_bn_b": "bn1.bias",
    "fc1000_w": "fc.weight",
    "fc1000_b": "fc.bias",
}
_CAFFE2_BLOCK = re.compile(r"res(\d+)_(\d+)_branch(1|2[abc])_(w|bn_s|bn_b)")


def _caffe2_to_torchvision(blob: str) -> str:
    """``res3_1_branch2b_bn_s`` -> ``layer2.1.bn2.weight``; names it does not know are kept (and
    reported as unexpected when loaded)."""
    if blob in _CAFFE2_STEM:
        return _CAFFE2_STEM[blob]
    match = _CAFFE2_BLOCK.fullmatch(blob)
    if match is None:
        return blob
    stage, block, branch, kind = match.groups()
    if branch == "1":  # the projection shortcut
        module = "downsample.0" if kind == "w" else "downsample.1"
    else:
        index = "abc".index(branch[1]) + 1
        module = f"conv{index}" if kind == "w" else f"bn{index}"
    parameter = "bias" if kind == "bn_b" else "weight"
    return f"layer{int(stage) - 1}.{block}.{module}.{parameter}"


# meta.kind of a checkpoint of ours -> fn(file, state dict) -> the state dict in the backbone's names.
CHECKPOINT_KINDS: Registry[Callable[[str, Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]] = Registry(
    "checkpoint kind", hint="detection checkpoints are read once resnet_det.modeling is imported"
)
CHECKPOINT_KINDS.register("classification", lambda source, state: state)


def _read_checkpoint(path: Path, checkpoint: Mapping) -> Weights:
    meta, state = checkpoint["meta"], checkpoint["model"]
    kind = meta.get("kind")
    if kind not in CHECKPOINT_KINDS:
        known = " or ".join(repr(name) for name in CHECKPOINT_KINDS)
        raise BackboneError(
            f"{path}: meta.kind is {kind!r}; a checkpoint of ours says {known} ({CHECKPOINT_KINDS.hint})"
        )
    state = CHECKPOINT_KINDS.get(kind)(str(path), state)
    input_format = TORCHVISION_INPUT
    try:
        if "input_format" in meta:
            input_format = InputFormat.from_dict(meta["input_format"])
    except (KeyError, TypeError, ValueError):
        raise BackboneError(
            f"{path}: meta.input_format {meta['input_format']!r} is not "
            "{channel_order: RGB|BGR, pixel_mean: [3 numbers], pixel_std: [3 numbers]}"
        ) from None
    options = {key: value for key, value in (meta.get("options") or {}).items() if key in ARCH_OPTIONS}
    if kind == "classification" and meta.get("num_classes") is not None:
        options["num_classes"] = meta["num_classes"]
    return Weights(str(path), state, input_format, options, arch=meta.get("arch"))
