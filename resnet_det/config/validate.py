"""The validation step of ``load_config``: a bad config fails before anything is built.

The schema's types (``Literal`` choices included) are checked by the merge; what they cannot say
is checked here, once, on the whole config: names that users extend by registering
(``model.head``, ``test.metric``: each layer hands its registry to ``register_choices``), ranges,
and the rules that tie keys together. Each error is a one-line ``ConfigError`` naming the key, its
value and the fix. The check functions that also guard plain arguments (``Trainer(...)``,
``BadRecordPolicy(...)``, ``build_lr_scheduler`` with derived steps) are the same functions.
"""

from typing import Dict, Optional, Sequence, get_args

from omegaconf import DictConfig, OmegaConf

from backbones import Registry
from resnet_det.config.defaults import DetectionConfig, LrPolicy, NonfiniteLoss, WarmupMethod
from resnet_det.errors import ConfigError

# Which bad-record actions each kind allows (datasets.<kind>), and why "fix" does not where refused.
BAD_RECORD_CHOICES = {
    "bad_boxes": (("skip", "stop"), "a box without area or with a non-finite coordinate cannot be repaired"),
    "boxes_outside": (("fix", "skip", "stop"), ""),
    "unknown_category": (("skip", "stop"), "there is no class to give the box"),
    "missing_image": (("skip", "stop"), "there is no image to train on"),
    "corrupt_image": (("skip", "stop"), "an undecodable image cannot be repaired"),
}
NONFINITE_POLICIES = get_args(NonfiniteLoss)
WARMUP_METHODS = get_args(WarmupMethod)
LR_POLICIES = get_args(LrPolicy)
_COARSEST_STRIDE = 32

_REGISTERED: Dict[str, Registry] = {}


def register_choices(key: str, registry: Registry) -> None:
    """Check the config key ``key`` (dotted) against the names in ``registry`` when configs load.

    Called by the layer that owns the registry (``resnet_det.modeling`` for ``model.head``,
    ``resnet_det.evaluation`` for ``test.metric``), so that the config layer imports nothing above
    it; names registered later (a user's head) are valid from then on.
    """
    _REGISTERED[key] = registry


def validate_config(cfg: DictConfig) -> None:
    """Every check of this module that applies to ``cfg`` (a detection or classification config,
    merged from its files and overrides, so the messages name keys rather than files)."""
    for key, registry in _REGISTERED.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and value not in registry:
            raise ConfigError(f"{key}={value!r}: {registry.unknown(value)}")
    check_trainer_settings(
        cfg.solver.max_iter,
        cfg.train.checkpoint_period,
        cfg.train.log_period,
        cfg.train.eval_period,
        cfg.solver.nonfinite_loss,
    )
    check_batch_and_lr(cfg.solver)
    check_schedule(cfg.solver, list(cfg.solver.steps))
    check_ema_decay(cfg.train.ema.decay)
    check_early_stopping(cfg.train.early_stopping.patience, cfg.train.early_stopping.min_delta)
    if OmegaConf.get_type(cfg) is DetectionConfig:
        for kind in BAD_RECORD_CHOICES:
            check_bad_record_action(kind, cfg.datasets[kind])
        for name, entry in cfg.datasets.custom.items():
            check_custom_dataset(name, entry)
        _check_detection_model(cfg)


def _check_detection_model(cfg: DictConfig) -> None:
    model = cfg.model
    ratios = list(model.anchors.aspect_ratios)
    if not ratios or min(ratios) <= 0:
        raise ConfigError(f"model.anchors.aspect_ratios={ratios}: give positive ratios, e.g. [0.5, 1.0, 2.0]")
    if model.num_classes is not None and model.num_classes < 1:
        raise ConfigError(f"model.num_classes={model.num_classes}: a detector needs at least one object class")
    divisibility = cfg.input.size_divisibility
    if divisibility < _COARSEST_STRIDE or divisibility % _COARSEST_STRIDE:
        raise ConfigError(f"input.size_divisibility={divisibility} must be a multiple of 32 (the coarsest stride)")
    fmt = model.input_format
    for key in ("pixel_mean", "pixel_std"):
        values = getattr(fmt, key)
        if values is not None and len(values) != 3:
            raise ConfigError(f"model.input_format.{key}={list(values)} needs 3 values (one per channel, 0..255 scale)")
    if fmt.pixel_std is not None and min(fmt.pixel_std) <= 0:
        raise ConfigError(f"model.input_format.pixel_std={list(fmt.pixel_std)} must be positive (0..255 scale)")
    if model.roi_heads.min_box_size < 0:
        raise ConfigError(
            f"model.roi_heads.min_box_size={model.roi_heads.min_box_size}: give 0 (keep all) or more pixels"
        )
    for key, node in (("rpn", model.rpn), ("roi_heads", model.roi_heads)):
        weights = list(node.box_reg_weights)
        if len(weights) != 4 or min(weights) <= 0:
            raise ConfigError(
                f"model.{key}.box_reg_weights={weights}: give 4 positive weights (wx, wy, ww, wh), e.g. "
                f"{[1.0, 1.0, 1.0, 1.0] if key == 'rpn' else [10.0, 10.0, 5.0, 5.0]}"
            )


# Per format of datasets.custom: the fields it needs, and those it may take (what each one is).
_CUSTOM_FIELDS = {
    "coco": ({"images": "the images folder", "annotations": "the instances json"}, {}),
    "voc": ({"root": "the folder with Annotations/"}, {"images", "split", "classes"}),
    "yolo": ({"classes": "an ultralytics data.yaml or a names file"}, {"images", "split"}),
}
_FIELDS = ("images", "annotations", "root", "split", "classes")


def check_custom_dataset(name: str, entry, where: Optional[str] = None) -> None:
    """``datasets.custom.<name>`` (or another ``where``, e.g. a tool's options) has the fields its
    ``format`` needs and none it would ignore; ``entry`` maps the fields to values or None."""
    where = where or f"datasets.custom.{name}"
    fmt = entry["format"]
    needed, allowed = _CUSTOM_FIELDS[fmt]
    for key, what in needed.items():
        if entry[key] is None:
            raise ConfigError(f"{where}: format {fmt} needs '{key}' ({what}); set it")
    for key in _FIELDS:
        if entry[key] is not None and key not in needed and key not in allowed:
            raise ConfigError(f"{where}: '{key}' is not used by format {fmt}; remove it (or set the right format)")
    if fmt == "yolo":
        data_yaml = str(entry["classes"]).endswith((".yaml", ".yml"))
        if data_yaml and (entry["split"] is None or entry["images"] is not None):
            raise ConfigError(
                f"{where}: with a data.yaml as 'classes', give 'split' (its key: train, val or test) and no 'images'"
            )
        if not data_yaml and (entry["images"] is None or entry["split"] is not None):
            raise ConfigError(
                f"{where}: with a names file as 'classes', give 'images' (a folder or a list file) and no 'split'"
            )


def check_bad_record_action(kind: str, value: str) -> None:
    """``datasets.<kind>=value`` must be an action that makes sense for that kind of bad record."""
    choices, why_not = BAD_RECORD_CHOICES[kind]
    if value not in choices:
        reason = f"{why_not}; " if value == "fix" and why_not else ""
        raise ConfigError(f"datasets.{kind}={value} is not possible: {reason}use {' or '.join(choices)}")


def check_trainer_settings(
    max_iter: int, checkpoint_period: int, log_period: int, eval_period: int, nonfinite_loss: str
) -> None:
    """The loop's counts and its non-finite loss policy."""
    if nonfinite_loss not in NONFINITE_POLICIES:
        raise ConfigError(f"solver.nonfinite_loss={nonfinite_loss!r}: use one of {', '.join(NONFINITE_POLICIES)}")
    for key, value, least in (
        ("solver.max_iter", max_iter, 1),
        ("train.checkpoint_period", checkpoint_period, 1),
        ("train.log_period", log_period, 1),
        ("train.eval_period", eval_period, 0),
    ):
        if value < least:
            raise ConfigError(f"{key}={value}: must be at least {least}")


def check_accumulate_steps(steps: int) -> None:
    """``solver.accumulate_steps``: micro-batches per optimiser step."""
    if steps < 1:
        raise ConfigError(f"solver.accumulate_steps={steps}: must be at least 1 (1: no accumulation)")


def check_ema_decay(decay: float) -> None:
    """``train.ema.decay``: the weight of the average so far at each step."""
    if not 0 < decay < 1:
        raise ConfigError(f"train.ema.decay={decay}: give a decay in (0, 1), e.g. 0.9998")


def check_early_stopping(patience: int, min_delta: float) -> None:
    """``train.early_stopping``: evaluations without improvement (0: off) and what improves."""
    if patience < 0:
        raise ConfigError(f"train.early_stopping.patience={patience}: give a number of evaluations (0: off)")
    if min_delta < 0:
        raise ConfigError(f"train.early_stopping.min_delta={min_delta}: must be >= 0")


def check_batch_and_lr(solver_cfg) -> None:
    """Batch sizes and the learning rate that the linear scaling rule reads."""
    for key in ("batch_size", "reference_batch_size"):
        if getattr(solver_cfg, key) < 1:
            raise ConfigError(f"solver.{key}={getattr(solver_cfg, key)}: must be a positive number of images")
    if not solver_cfg.base_lr > 0:
        raise ConfigError(f"solver.base_lr={solver_cfg.base_lr}: must be positive")
    check_accumulate_steps(solver_cfg.accumulate_steps)


def check_schedule(solver_cfg, steps: Sequence[int]) -> None:
    """Warm-up and decay: ``steps`` are ``solver.steps``, or those a recipe derived (from epochs).

    ``lr_policy``, ``plateau_*`` and ``warmup_until_error`` exist in the classification schema only.
    """
    steps = list(steps)
    method = solver_cfg.warmup_method
    policy = getattr(solver_cfg, "lr_policy", "steps")
    until_error: Optional[float] = getattr(solver_cfg, "warmup_until_error", None)
    patience = getattr(solver_cfg, "plateau_patience", 1)
    threshold = getattr(solver_cfg, "plateau_threshold", 0.0)
    if method not in WARMUP_METHODS:
        raise ConfigError(f"solver.warmup_method={method!r}: use one of {', '.join(WARMUP_METHODS)}")
    if policy not in LR_POLICIES:
        raise ConfigError(f"solver.lr_policy={policy!r}: use one of {', '.join(LR_POLICIES)}")
    if steps != sorted(steps) or any(s < 0 for s in steps):
        raise ConfigError(f"solver.steps={steps}: list the iterations in increasing order")
    if solver_cfg.warmup_iters < 0 or not 0 < solver_cfg.warmup_factor <= 1:
        raise ConfigError(
            f"solver.warmup_iters={solver_cfg.warmup_iters}, solver.warmup_factor={solver_cfg.warmup_factor}: "
            "use warmup_iters >= 0 and 0 < warmup_factor <= 1"
        )
    if policy == "plateau" and steps:
        raise ConfigError(f"solver.lr_policy=plateau decides the lr drops itself: set solver.steps=[] (not {steps})")
    if patience < 1 or threshold < 0:
        raise ConfigError(
            f"solver.plateau_patience={patience}, solver.plateau_threshold={threshold}: "
            "use a patience of at least 1 evaluation and a threshold >= 0"
        )
    if until_error is not None:
        if not 0 < until_error <= 100:
            raise ConfigError(f"solver.warmup_until_error={until_error}: give a training error in percent, in (0, 100]")
        if solver_cfg.warmup_iters or method != "constant":
            raise ConfigError(
                "solver.warmup_until_error replaces a warm-up of fixed length: set solver.warmup_iters=0 and "
                f"solver.warmup_method=constant (not {solver_cfg.warmup_iters} and {method})"
            )
