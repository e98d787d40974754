"""Training a ResNet classifier from a config: what tools/train_cls.py runs.

Builds the data loaders, the model, the solver and the shared ``Trainer`` (the loop detection uses
too: checkpoints, resuming, mixed precision, DDP, metrics.jsonl, TensorBoard, and the hooks of
``train.best`` / ``early_stopping`` / ``ema``). Each log line carries the training loss and top-1
error of its window, each evaluation the validation loss and top-1 / top-5 error (``val/...``,
percent). Checkpoints record the ``meta`` that ``backbones.load_weights``
reads, so they load into ``build_backbone`` and ``train_det.py --weights`` as they are.
"""

import logging
import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from backbones import InputFormat, build_model
from resnet_det.data.classification import build_classification_loaders, classification_train_loader
from resnet_det.engine.run import TrainingRun, training_run
from resnet_det.engine.solver import build_lr_scheduler, build_optimizer
from resnet_det.engine.trainer import Trainer
from resnet_det.errors import ConfigError, DatasetError
from resnet_det.evaluation.classification import evaluate_classifier, topk_correct
from resnet_det.utils.comm import reduce_dict

__all__ = ["train_classifier", "derive_schedule", "classification_meta"]

logger = logging.getLogger(__name__)


def derive_schedule(solver_cfg, train_size: int) -> Tuple[int, List[int]]:
    """``(max_iter, steps)`` in iterations; epoch counts, where the recipe gives them, are converted
    with ``train_size / (solver.batch_size * solver.accumulate_steps)`` iterations (optimiser
    steps) per epoch, rounded up.

    ``solver.epochs`` sets the length and ``solver.step_epochs`` the lr drops, independently: a run
    cut short with ``--max-iter`` keeps the drops where the full schedule has them.
    """
    per_epoch = train_size / (solver_cfg.batch_size * solver_cfg.accumulate_steps)
    max_iter, steps = solver_cfg.max_iter, list(solver_cfg.steps)
    if solver_cfg.epochs is not None:
        if solver_cfg.epochs <= 0:
            raise ConfigError(f"solver.epochs={solver_cfg.epochs}: give a positive number of epochs")
        max_iter = math.ceil(solver_cfg.epochs * per_epoch)
    if solver_cfg.step_epochs:
        steps = [math.ceil(e * per_epoch) for e in solver_cfg.step_epochs]
    return max_iter, steps


def _input_format(cfg: DictConfig, train_transform) -> InputFormat:
    """How the data is normalised, per channel: with a per-pixel mean, the mean image's channel
    means (the form a detector of any image size can subtract, as for MSRA's models)."""
    mean = train_transform.channel_mean if train_transform.per_pixel else tuple(cfg.input.pixel_mean)
    return InputFormat("RGB", mean, tuple(cfg.input.pixel_std))


def classification_meta(
    cfg: DictConfig, model: torch.nn.Module, class_names: Sequence[str], input_format: InputFormat
) -> Dict:
    """The checkpoint's ``meta``: what ``backbones.weights`` needs to rebuild and load the model
    (kind, arch, num_classes, options) and how its images were normalised (input_format)."""
    return {
        "kind": "classification",
        "arch": cfg.model.name,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "input_format": input_format.to_dict(),
        "options": dict(getattr(model, "options", {})),
        "dataset": cfg.data.dataset,
    }


def _build_model(cfg: DictConfig, num_classes: int, data_format: InputFormat) -> torch.nn.Module:
    model_cfg = cfg.model
    model = build_model(
        model_cfg.name,
        num_classes,
        weights=model_cfg.weights,
        shortcut=model_cfg.shortcut,
        stride_in_1x1=model_cfg.stride_in_1x1,
        zero_init_residual=model_cfg.zero_init_residual,
        norm=model_cfg.norm,
    )
    if model_cfg.weights is not None:
        # The loader normalises with cfg.input; weights trained on another normalisation (e.g.
        # MSRA's BGR, unscaled) would see inputs they were not made for.
        if model.input_format != data_format:
            logger.warning(
                "%s expects input %s but the data is normalised as %s: set input.pixel_mean/pixel_std "
                "to match, or expect a slower start",
                model_cfg.weights,
                model.input_format,
                data_format,
            )
    return model


def train_classifier(cfg: DictConfig, resume: bool = False, force_unlock: bool = False) -> Dict[str, float]:
    """Train as ``cfg`` says; returns the last logged scalars and the final ``val/`` metrics.

    The run folder is locked from the start and written only once the trainer has accepted it,
    as in detection; ``force_unlock`` takes over a lock left by another host (see ``run_lock``).
    """
    with training_run(cfg, resume=resume, force_unlock=force_unlock) as run:
        return _train_classifier(cfg, run)


def _train_classifier(cfg: DictConfig, run: TrainingRun) -> Dict[str, float]:
    dist = run.dist

    train_loader, val_loader, class_names = build_classification_loaders(
        cfg, start_iter=0, rank=dist.rank, world_size=dist.world_size
    )
    train_size = len(train_loader.dataset)
    num_classes = cfg.model.num_classes or len(class_names)
    if num_classes != len(class_names):
        raise DatasetError(
            f"model.num_classes={num_classes} but data.dataset={cfg.data.dataset} has {len(class_names)} "
            "classes: drop model.num_classes to take it from the data"
        )
    max_iter, steps = derive_schedule(cfg.solver, train_size)
    # A copy with the schedule in iterations, so that config.yaml shows what really ran.
    cfg = OmegaConf.merge(cfg, {"solver": {"max_iter": max_iter, "steps": steps}})

    input_format = _input_format(cfg, train_loader.dataset.transform)
    model = _build_model(cfg, num_classes, input_format)
    meta = classification_meta(cfg, model, class_names, input_format)
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_lr_scheduler(optimizer, cfg.solver, max_iter=max_iter, steps=steps)
    if cfg.solver.lr_policy == "plateau" and cfg.train.eval_period < 1:
        raise ConfigError(
            "solver.lr_policy=plateau reads the validation error of each evaluation: set train.eval_period "
            "(e.g. about one epoch of iterations)"
        )

    def make_loader(start_iter: int):
        if start_iter == 0:
            return train_loader
        return classification_train_loader(
            cfg, train_loader.dataset, start_iter=start_iter, rank=dist.rank, world_size=dist.world_size
        )

    on_gpu = dist.device.type == "cuda"
    channels_last = cfg.train.channels_last and on_gpu
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def step_fn(training_model, batch):
        images, labels = batch
        images = images.to(dist.device, non_blocking=on_gpu, memory_format=memory_format)
        labels = labels.to(dist.device, non_blocking=on_gpu)
        logits = training_model(images)
        loss = F.cross_entropy(logits.float(), labels)
        top1 = topk_correct(logits.detach(), labels, ks=(1,))[0]
        top1_err = 100.0 - 100.0 * float(top1) / len(labels)
        if scheduler.warming_up_by_error:
            # Every rank must end the warm-up at the same iteration: the mean over ranks.
            scheduler.observe_train_error(reduce_dict({"top1_err": top1_err})["top1_err"])
        return {"loss_cls": loss}, {"top1_err": top1_err}

    def eval_fn(module, iteration):
        metrics = evaluate_classifier(
            module, val_loader, dist.device, ten_crop=cfg.input.ten_crop_test, channels_last=channels_last
        )
        if dist.rank == 0:
            logger.info(
                "iteration %d: val top-1 error %.2f%%, top-5 error %.2f%% (%d images)",
                iteration,
                metrics["top1_err"],
                metrics["top5_err"],
                metrics["num_images"],
            )
        scheduler.observe_val_error(metrics["top1_err"])  # the same on every rank: gathered
        return {f"val/{k}": v for k, v in metrics.items() if k != "num_images"}

    trainer = Trainer.from_config(
        cfg,
        dist=dist,
        max_iter=max_iter,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        make_loader=make_loader,
        step_fn=step_fn,
        eval_fn=eval_fn,
        meta=meta,
        kind="classification",
    )
    run.start(trainer, cfg)
    if dist.is_main:
        logger.info(
            "training %s on %d images of %s (%d classes) for %d iterations (%.1f epochs)",
            cfg.model.name,
            train_size,
            cfg.data.dataset,
            num_classes,
            max_iter,
            max_iter * cfg.solver.batch_size * cfg.solver.accumulate_steps / train_size,
        )
    return trainer.train()
