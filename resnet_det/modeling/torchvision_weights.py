"""torchvision's Faster R-CNN weights as our detector's, and ours in torchvision's names.

torchvision's ``fasterrcnn_resnet50_fpn`` is the assembly that our ``fpn`` head builds on ``r50``:
the same FPN, RPN and RoI-head classes, so their weights differ only in names. Its trunk is
``backbone.body`` where ours is ``backbone.bottom_up`` (torchvision's ResNet layout, stride in the
3x3), and its published COCO weights (2019) use torchvision 0.5's names for the FPN's and the
RPN's convolutions (``fpn.inner_blocks.0.weight`` for today's ``fpn.inner_blocks.0.0.weight``).

``model.weights`` names such weights: ``torchvision:<name>`` (one of ``TORCHVISION_DETECTORS``,
through the torch.hub cache as the backbones' ImageNet weights) or a ``.pth`` file holding a
torchvision detector's state dict, recognised by its keys. The class predictor has a row per
class; ``load_detector_weights`` keeps the rows of the classes whose names match the model's
(COCO's category names for torchvision's COCO weights) and initialises the others, or the whole
predictor when no name matches, and logs which it did.
"""

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

from backbones.errors import UnsafeFileError
from backbones.serialization import torch_load
from backbones.weights import TORCHVISION_INPUT, hub_state_dict
from resnet_det.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

PREFIX = "torchvision:"
# torchvision's published detectors that our builder reproduces: name -> torchvision's weights enum.
TORCHVISION_DETECTORS = {"fasterrcnn_resnet50_fpn_coco": FasterRCNN_ResNet50_FPN_Weights.COCO_V1}
# The recipe that builds the model they fit.
RECIPE = "configs/coco/faster_rcnn_fpn_torchvision.yaml"
# What those weights fix of the model that our config leaves open (torchvision's trunk layout).
ARCH = "r50"
HEAD = "fpn"
BACKBONE_OPTIONS = {"stride_in_1x1": False}
# torchvision's 91-way COCO predictor: background, then COCO's category ids 1..90, the ten unused
# ones named "N/A".
COCO_CATEGORIES = tuple(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"][1:])
UNUSED = "N/A"

TV_TRUNK, OUR_TRUNK = "backbone.body.", "backbone.bottom_up."
PREDICTOR = "roi_heads.box_predictor."
_BN_COUNTER = "num_batches_tracked"
# torchvision 0.5's names (its published weights) -> today's.
_LEGACY_NAMES = (
    (re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(weight|bias)$"), r"backbone.fpn.\1_blocks.\2.0.\3"),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
)


def is_torchvision_detector(state) -> bool:
    """Whether ``state`` is the state dict of a torchvision Faster R-CNN on a ResNet with FPN."""
    return (
        isinstance(state, Mapping)
        and f"{TV_TRUNK}conv1.weight" in state
        and f"{PREDICTOR}cls_score.weight" in state
        and all(isinstance(value, torch.Tensor) for value in state.values())
    )


def from_torchvision(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """torchvision's detector state dict in our names (BatchNorm's batch counters left out)."""
    out = {}
    for key, value in state.items():
        if key.endswith(_BN_COUNTER):
            continue
        for pattern, replacement in _LEGACY_NAMES:
            key = pattern.sub(replacement, key)
        out[OUR_TRUNK + key[len(TV_TRUNK) :] if key.startswith(TV_TRUNK) else key] = value
    return out


def to_torchvision(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our R50-FPN detector's state dict in torchvision's names, loadable by
    ``fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)`` (whose trunk has BatchNorm, so
    each gets a batch counter; torchvision's frozen BatchNorm ignores them)."""
    out = {}
    for key, value in state.items():
        key = TV_TRUNK + key[len(OUR_TRUNK) :] if key.startswith(OUR_TRUNK) else key
        out[key] = value
        if key.startswith(TV_TRUNK) and key.endswith(".running_var"):
            out[key[: -len("running_var")] + _BN_COUNTER] = torch.tensor(0, dtype=torch.long)
    return out


@dataclass(frozen=True)
class DetectorWeights:
    """A torchvision detector's weights, in our names."""

    source: str  # the file they were read from
    state_dict: Mapping[str, torch.Tensor]
    class_names: Optional[tuple]  # the predictor's classes (labels 1..N); None = not known

    @property
    def num_classes(self) -> int:
        return self.state_dict[f"{PREDICTOR}cls_score.weight"].shape[0] - 1


def names_detector_weights(weights: Optional[str]) -> bool:
    """Whether ``weights`` (a ``--weights`` value) names a torchvision detector's weights rather than a
    backbone's: ``torchvision:<name>``, or a ``.pth`` file whose keys are a torchvision detector's."""
    if not weights:
        return False
    if weights.startswith(PREFIX):
        return True
    path = Path(weights)
    if path.suffix != ".pth" or not path.is_file():
        return False
    try:
        return is_torchvision_detector(torch_load(path))
    except UnsafeFileError:
        raise
    except Exception:  # damaged or foreign: not detector weights; its own reader says what is wrong
        return False


def weights_overrides(weights: str) -> List[str]:
    """The config overrides of train_det.py's ``--weights``: a torchvision detector's weights go to
    ``model.weights``, with the trunk layout they fix; anything else (a backbone's, or ``none``) goes
    to ``model.backbone.weights`` and replaces any detector weights that the recipe names."""
    if names_detector_weights(weights):
        return [f"model.weights={weights}", "model.backbone.weights=null", "model.backbone.stride_in_1x1=false"]
    backbone = "null" if weights.lower() == "none" else weights
    return ["model.weights=null", f"model.backbone.weights={backbone}"]


def read_detector_weights(weights: str) -> DetectorWeights:
    """``torchvision:<name>`` (through the torch.hub cache) or a ``.pth`` state-dict file, in our names."""
    if weights.startswith(PREFIX):
        name = weights[len(PREFIX) :]
        if name not in TORCHVISION_DETECTORS:
            raise ConfigError(
                f"model.weights={weights}: not one of torchvision's detectors that this project builds "
                f"({', '.join(PREFIX + n for n in TORCHVISION_DETECTORS)})"
            )
        state, file = hub_state_dict(TORCHVISION_DETECTORS[name].url)
        return DetectorWeights(str(file), from_torchvision(state), COCO_CATEGORIES)
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"model.weights={weights}: no such file; give torchvision:<name> or a .pth state dict")
    try:
        state = torch_load(path)
    except UnsafeFileError:
        raise
    except Exception as e:
        raise CheckpointError(f"model.weights={weights} cannot be read ({type(e).__name__}): damaged?") from None
    if not is_torchvision_detector(state):
        raise CheckpointError(
            f"model.weights={weights} is not a torchvision Faster R-CNN state dict (no {TV_TRUNK}conv1.weight "
            f"and {PREDICTOR}cls_score.weight); a backbone's weights go to model.backbone.weights"
        )
    converted = DetectorWeights(str(path), from_torchvision(state), None)
    names = COCO_CATEGORIES if converted.num_classes == len(COCO_CATEGORIES) else None
    return DetectorWeights(converted.source, converted.state_dict, names)


def check_model_config(model_cfg, weights: str) -> None:
    """The options that torchvision's detector weights fix (``model.weights`` set)."""
    backbone = model_cfg.backbone
    wrong = [
        f"{key}={value}"
        for key, value, needed in (
            ("model.backbone.name", backbone.name, ARCH),
            ("model.head", model_cfg.head, HEAD),
            ("model.backbone.stride_in_1x1", backbone.stride_in_1x1, BACKBONE_OPTIONS["stride_in_1x1"]),
        )
        if value != needed
    ]
    if backbone.weights is not None:
        wrong.append(f"model.backbone.weights={backbone.weights} (the detector's weights replace it: null)")
    if wrong:
        raise ConfigError(
            f"model.weights={weights} is torchvision's R50-FPN, which needs model.backbone.name={ARCH}, "
            f"model.head={HEAD}, model.backbone.stride_in_1x1=false and model.backbone.weights=null, "
            f"not {', '.join(wrong)}: start from {RECIPE}"
        )


def _matched_rows(source_names: Optional[Sequence[str]], class_names: Sequence[str]) -> List[tuple]:
    """(our label, their label) of the classes whose names match (case-insensitive), background 0 first."""
    if not source_names:
        return []
    if list(source_names) == list(class_names):
        return list(enumerate(range(len(class_names) + 1)))
    theirs = {name.strip().lower(): label for label, name in enumerate(source_names, start=1) if name != UNUSED}
    pairs = [(label, theirs.get(name.strip().lower())) for label, name in enumerate(class_names, start=1)]
    matched = [(ours, their) for ours, their in pairs if their is not None]
    return [(0, 0), *matched] if matched else []


def load_detector_weights(model: nn.Module, weights: DetectorWeights, class_names: Sequence[str]) -> str:
    """Load ``weights`` into ``model`` (built for ``class_names``): trunk, FPN, RPN and box head as
    they are; of the class predictor, the rows of the classes whose names match, the others (and
    all of it when none matches) left at their initialisation. Returns what it did, as logged."""
    state = {key: value for key, value in weights.state_dict.items() if not key.startswith(PREDICTOR)}
    rows = _matched_rows(weights.class_names, class_names)
    if rows:
        own = model.state_dict()
        ours, theirs = (torch.tensor(index) for index in zip(*rows))
        for kind in ("cls_score", "bbox_pred"):
            per_class = 1 if kind == "cls_score" else 4
            for param in ("weight", "bias"):
                key = f"{PREDICTOR}{kind}.{param}"
                source, target = weights.state_dict[key], own[key].clone()
                shape = (-1, per_class, *source.shape[1:])
                target.view(shape)[ours] = source.view(shape)[theirs]
                state[key] = target
        kept = [class_names[label - 1] for label in ours.tolist()[1:]]
        new = [name for name in class_names if name not in kept]
        done = f"class predictor: kept the rows of {len(kept)} of {len(class_names)} classes, whose names match"
        done += f" ({', '.join(kept[:5])}{', ...' if len(kept) > 5 else ''})"
        if new:
            done += f"; initialised the rows of the other {len(new)} ({', '.join(new[:5])}{', ...' if len(new) > 5 else ''})"
    else:
        unnamed = "its classes are not named" if not weights.class_names else "no class name matches"
        done = f"class predictor: re-initialised for the {len(class_names)} classes ({unnamed})"
    result = model.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not key.startswith(PREDICTOR)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{weights.source} does not fit the model (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}): "
            f"start from {RECIPE}"
        )
    logger.info("loaded torchvision's detector %s: trunk, FPN, RPN and box head; %s", weights.source, done)
    return done


def as_checkpoint(weights: str, class_names: Optional[Sequence[str]] = None) -> Dict:
    """The weights as a detection checkpoint of ours (``{"model", "meta"}``), for eval.py and infer.py:
    the predictor keeps the rows of ``class_names`` (default: the weights' own classes, without
    COCO's unused ids), labelled with their category ids (their labels in torchvision)."""
    read = read_detector_weights(weights)
    source_names = read.class_names or tuple(f"class_{i}" for i in range(1, read.num_classes + 1))
    names = list(class_names or [name for name in source_names if name != UNUSED])
    rows = _matched_rows(source_names, names)
    ours, theirs = zip(*rows) if rows else ((), ())
    if len(rows) != len(names) + 1:
        raise ConfigError(f"{read.source} has no classes named {sorted(set(names) - set(source_names))}")
    state = dict(read.state_dict)
    for kind, per_class in (("cls_score", 1), ("bbox_pred", 4)):
        for param in ("weight", "bias"):
            key = f"{PREDICTOR}{kind}.{param}"
            value = state[key]
            state[key] = value.view(-1, per_class, *value.shape[1:])[list(theirs)].reshape(-1, *value.shape[1:])
    meta = {
        "kind": "detection",
        "arch": ARCH,
        "head": HEAD,
        "num_classes": len(names),
        "class_names": names,
        "label_to_category_id": {ours[i]: theirs[i] for i in range(1, len(rows))},
        "input_format": TORCHVISION_INPUT.to_dict(),
        "backbone_options": dict(BACKBONE_OPTIONS),
        "recipe": RECIPE,
        "source": read.source,
    }
    return {"model": state, "meta": meta}
