"""Fine-tuning a Faster R-CNN detector from a config: what tools/train_det.py runs.

Builds the datasets, the detector, the solver and the shared ``Trainer``; writes the resolved
``config.yaml`` and the data report into the run folder before the first iteration, evaluates at
``eval_period`` and at the end (mAP and, with ``test.val_loss``, the validation losses, in one
pass), and leaves the mAP report of the last evaluation beside the checkpoints. The set-up is ``engine.run``'s: the run folder's lock is held from the start, and
nothing is written before the trainer has accepted the folder (a new run, or one to resume), so a
refused call changes nothing. The data report is updated at the end with the images found
undecodable.
"""

import json
import logging
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from omegaconf import DictConfig

from resnet_det.config import config_hash
from resnet_det.data.build import build_detection_train_loader, unreadable_files
from resnet_det.data.catalog import get_dataset, get_datasets, register_from_config
from resnet_det.engine.inference import detect_on_records
from resnet_det.engine.run import TrainingRun, training_run
from resnet_det.engine.solver import build_lr_scheduler, build_optimizer
from resnet_det.engine.trainer import Trainer
from resnet_det.engine.val_loss import DetectionLossMeter
from resnet_det.errors import ConfigError, DatasetError
from resnet_det.evaluation.evaluator import evaluate_detections
from resnet_det.evaluation.report import format_table, write_report
from resnet_det.modeling import build_detector, compile_backbone
from resnet_det.modeling.torchvision_weights import load_detector_weights, read_detector_weights
from resnet_det.utils import comm
from resnet_det.utils.file_io import atomic_write_text
from resnet_det.utils.safe_paths import output_name

logger = logging.getLogger(__name__)


def load_training_data(cfg: DictConfig) -> Tuple[List[dict], dict]:
    """Records of every training dataset (one label space), with their bad-record counts merged."""
    register_from_config(cfg.datasets)
    return get_datasets(list(cfg.datasets.train), root=cfg.datasets.root, policy=cfg.datasets)


def detection_meta(cfg: DictConfig, model: torch.nn.Module, metadata: dict) -> Dict:
    """What a checkpoint needs so that eval.py / infer.py can rebuild and label the detector."""
    fmt = model.backbone_input_format
    return {
        "kind": "detection",
        "arch": cfg.model.backbone.name,
        "head": cfg.model.head,
        "num_classes": len(metadata["class_names"]),
        "class_names": list(metadata["class_names"]),
        "label_to_category_id": {int(k): int(v) for k, v in metadata["label_to_category_id"].items()},
        "input_format": {
            "channel_order": fmt.channel_order,
            "pixel_mean": list(fmt.pixel_mean),
            "pixel_std": list(fmt.pixel_std),
        },
        "train_datasets": list(cfg.datasets.train),
    }


def evaluate_detector(
    model: torch.nn.Module,
    cfg: DictConfig,
    dataset_name: str,
    device: torch.device,
    output_dir: Path,
    checkpoint: str = "",
    progress: bool = True,
    val_loss: bool = False,
) -> Dict:
    """Inference on one registered split, then its metric; rank 0 writes the report files.

    With ``val_loss``, the same pass also gives the training losses on the split
    (``engine.val_loss``), as the report's ``losses``."""
    records, metadata = get_dataset(dataset_name, root=cfg.datasets.root, policy=cfg.datasets)
    meter = DetectionLossMeter(model, records, seed=cfg.train.seed, use_difficult=cfg.datasets.use_difficult)
    detections = detect_on_records(
        model, cfg, records, metadata, device, progress=progress, on_batch=meter if val_loss else None
    )
    losses = meter.result() if val_loss else {}
    report = {}
    if comm.is_main_process():
        report = evaluate_detections(detections, records, metadata, metric=cfg.test.metric)
        report.update({"dataset": dataset_name, "checkpoint": checkpoint, "config_hash": config_hash(cfg)})
        if val_loss:
            report["losses"] = losses
        write_report(report, detections, output_dir)
        logger.info("evaluation on %s (%s):\n%s", dataset_name, checkpoint, format_table(report))
    return report


# Where tools/train_cls.py writes the shapes pretraining by default (configs/classification/shapes.yaml),
# the backbone that configs/shapes/*.yaml start from.
SHAPES_PRETRAINING = Path("output/shapes_cls/model_final.pth")


def check_backbone_weights(cfg: DictConfig) -> None:
    """A weights file the config names but that is not there: say which command makes it."""
    weights = cfg.model.backbone.weights
    if weights is None or weights == "imagenet" or Path(weights).is_file():
        return
    path = Path(weights)
    if path == SHAPES_PRETRAINING:
        make = "`python tools/train_cls.py` makes it (the shapes pretraining, a few CPU minutes)"
    elif path.name == "model_final.pth":
        make = f"it is the final checkpoint of a classification run: `python tools/train_cls.py --output {path.parent}`"
    else:
        make = "check the path"
    raise ConfigError(
        f"model.backbone.weights={weights} not found: {make}; or pass --weights imagenet | FILE | none (from scratch)"
    )


def train_detector(cfg: DictConfig, resume: bool = False, force_unlock: bool = False) -> Dict:
    """Train as ``cfg`` says; returns the final evaluation report (empty on non-zero ranks).

    ``force_unlock`` takes over a lock that a process on another host left (see ``run_lock``).
    """
    check_backbone_weights(cfg)
    with training_run(cfg, resume=resume, force_unlock=force_unlock) as run:
        return _train_detector(cfg, run)


def _train_detector(cfg: DictConfig, run: TrainingRun) -> Dict:
    dist, output_dir = run.dist, run.output_dir

    records, metadata = load_training_data(cfg)
    num_classes = cfg.model.num_classes or len(metadata["class_names"])
    if num_classes != len(metadata["class_names"]):
        raise DatasetError(
            f"model.num_classes={num_classes} but {cfg.datasets.train[0]} has {len(metadata['class_names'])} "
            "classes: drop model.num_classes to take it from the data"
        )
    model = build_detector(cfg, num_classes)
    if cfg.model.weights:
        load_detector_weights(model, read_detector_weights(cfg.model.weights), metadata["class_names"])
    model.to(dist.device)
    if cfg.train.compile_backbone:
        compile_backbone(model, cfg.train.compile_backbone)
    meta = detection_meta(cfg, model, metadata)
    optimizer = build_optimizer(model, cfg.solver)
    scheduler = build_lr_scheduler(optimizer, cfg.solver)

    train_sets = []

    def make_loader(start_iter: int):
        loader = build_detection_train_loader(
            cfg, records, start_iter=start_iter, rank=dist.rank, world_size=dist.world_size
        )
        train_sets.append(loader.dataset)
        return loader

    non_blocking = dist.device.type == "cuda"

    def step_fn(training_model, batch):
        images, targets = batch
        images = [im.to(dist.device, non_blocking=non_blocking) for im in images]
        targets = [
            {k: (v.to(dist.device, non_blocking=non_blocking) if torch.is_tensor(v) else v) for k, v in t.items()}
            for t in targets
        ]
        return training_model(images, targets), {}

    def eval_fn(module, iteration):
        scores = {}
        for name in cfg.datasets.test:
            report = evaluate_detector(
                module,
                cfg,
                name,
                dist.device,
                output_dir / "eval" / output_name(name),
                checkpoint=f"iteration {iteration}",
                val_loss=cfg.test.val_loss,
            )
            scores.update({f"{name}/{k}": v for k, v in report.get("summary", {}).items()})
            scores.update({f"{name}/{k}": v for k, v in report.get("losses", {}).items()})
        return scores

    trainer = Trainer.from_config(
        cfg,
        dist=dist,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        make_loader=make_loader,
        step_fn=step_fn,
        eval_fn=eval_fn if len(cfg.datasets.test) else None,
        meta=meta,
        kind="detection",
        metric=cfg.test.metric,
    )
    run.start(trainer, cfg)
    if dist.is_main:
        write_data_report(metadata["sanitize_counts"], output_dir)
        logger.info("training on %d images of %s, %d classes", len(records), list(cfg.datasets.train), num_classes)
    results = trainer.train()
    report_unreadable_images(train_sets, metadata["sanitize_counts"], output_dir)
    return results


def report_unreadable_images(datasets, counts, output_dir: Path) -> None:
    """Add the training images skipped as undecodable (``datasets.corrupt_image=skip``; only known
    once read) to the counts of ``data_report.json``, over all ranks (a collective)."""
    files = unreadable_files(datasets)
    if comm.get_world_size() > 1:
        files = sorted({name for part in comm.all_gather_object(files) for name in part})
    if not files or not comm.is_main_process():
        return
    counts.add_undecodable(files)
    write_data_report(counts, output_dir)


def write_data_report(counts, output_dir: Path) -> None:
    """``data_report.json``: what the bad-record policies fixed or skipped; a warning if anything."""
    path = output_dir / "data_report.json"
    atomic_write_text(path, json.dumps(counts.to_dict(), indent=2, sort_keys=True) + "\n")
    if counts.total():
        logger.warning("data: %s (details in %s)", counts.summary(), path)
