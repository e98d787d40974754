"""Loading a trained detector back (from a run folder or a config + checkpoint) and predicting.

A detection checkpoint carries its resolved config and ``meta`` (classes, category ids, input
format), so ``--run DIR`` alone is enough to rebuild the model, and it is rebuilt from that stored
config, not from the folder's ``config.yaml`` (which a later command may have rewritten; a
difference is logged). A checkpoint that does not fit the config (another backbone, head or
number of classes) is refused with a message naming both.

Reading a run folder takes no lock, also while the run trains: checkpoints are written atomically
and ``last_checkpoint`` names only complete ones, so a reader always sees a whole file.
"""

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from resnet_det.config import DetectionConfig, apply_overrides, load_config
from resnet_det.config.validate import validate_config
from resnet_det.data.transforms import resize_shortest_edge
from resnet_det.engine.checkpoint import FINAL_CHECKPOINT, Checkpointer
from resnet_det.engine.hooks import BEST_CHECKPOINT
from resnet_det.errors import CheckpointError, ConfigError
from resnet_det.modeling import build_detector, prepare_for_inference
from resnet_det.modeling.precision import resolve_precision
from resnet_det.modeling.torchvision_weights import as_checkpoint, names_detector_weights

logger = logging.getLogger(__name__)


@dataclass
class LoadedDetector:
    model: torch.nn.Module
    cfg: DictConfig
    meta: Dict
    checkpoint: Path
    iteration: Optional[int] = None
    best: Optional[Dict] = None  # model_best.pth's record: metric, mode, value, iteration, ema

    def describe(self) -> str:
        """Which checkpoint this is, for the tools to print."""
        at = f" (iteration {self.iteration})" if self.iteration is not None else ""
        if self.best:
            weights = "EMA weights, " if self.best.get("ema") else ""
            at = f" (best {self.best['metric']} {self.best['value']:.4g}, {weights}iteration {self.best['iteration']})"
        return f"checkpoint {self.checkpoint}{at}"


def _periodic_iteration(path: Path) -> int:
    m = re.fullmatch(r"model_(\d+)\.pth", path.name)
    return int(m.group(1)) if m else -1


def load_run_checkpoint(run_dir: Path) -> Tuple[Path, Dict]:
    """The newest complete checkpoint of a run, and its contents: ``model_final.pth``, unless a
    longer, resumed run has gone past it, else the checkpoint ``last_checkpoint`` names."""
    if not run_dir.is_dir():
        raise ConfigError(f"--run {run_dir}: no such folder; give the --output folder of a train_det.py run")
    checkpointer = Checkpointer(run_dir, is_main=False)
    final = run_dir / FINAL_CHECKPOINT
    found = (final, checkpointer.load(final)) if final.is_file() else None
    for _ in range(3):  # a run in progress may prune the file between naming and our opening it
        latest = checkpointer.latest()
        if latest is None or (found is not None and _periodic_iteration(latest) <= int(found[1].get("iteration", -1))):
            break
        try:
            return latest, checkpointer.load(latest)
        except CheckpointError:
            if latest.is_file():
                raise
    if found is None:
        raise CheckpointError(
            f"{run_dir} holds no checkpoint (model_final.pth or last_checkpoint): has training started?"
        )
    return found


def _stored_config(state: Dict, weights: Path, run: Path, overrides) -> DictConfig:
    """The config that trained ``weights`` (saved in the checkpoint), with ``overrides``."""
    text = state["config"]
    folder_config = run / "config.yaml"
    if folder_config.is_file() and folder_config.read_text() != text:
        logger.warning(
            "%s differs from the config stored in %s, which trained these weights: using the stored one",
            folder_config,
            weights,
        )
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(DetectionConfig), OmegaConf.create(text))
    except OmegaConfBaseException as e:
        raise ConfigError(
            f"the config stored in {weights} does not fit this version ({str(e).splitlines()[0]}): "
            "give --config FILE --weights CHECKPOINT instead of --run"
        ) from None
    cfg = apply_overrides(cfg, overrides)
    validate_config(cfg)
    return cfg


def _check_fits(meta: Dict, cfg: DictConfig, path: Path) -> None:
    if meta.get("kind") != "detection":
        raise CheckpointError(
            f"{path} is a {meta.get('kind', 'unknown')} checkpoint, not a detector: pass it to train_det.py --weights to fine-tune it"
        )
    for what, ours in (("arch", cfg.model.backbone.name), ("head", cfg.model.head)):
        if meta.get(what) != ours:
            fix = f"use {meta['recipe']}" if meta.get("recipe") else "use the run's own config.yaml (or --run)"
            raise CheckpointError(
                f"{path} was trained with {what}={meta.get(what)} but the config says {ours}: "
                f"{fix}, or set model.{'backbone.name' if what == 'arch' else 'head'}={meta.get(what)}"
            )


def load_detector(
    run: Optional[Path] = None,
    config: Optional[Path] = None,
    weights: Optional[Path] = None,
    overrides=(),
    device: torch.device = torch.device("cpu"),
    checkpoint: str = "last",
) -> LoadedDetector:
    """The detector of a run (``run``) or of ``config`` + ``weights``, in eval mode on ``device``;
    ``checkpoint="best"`` takes a run's ``model_best.pth`` instead of its newest checkpoint.

    ``weights`` may also be a torchvision detector's (``torchvision_weights``): COCO's 80 classes.
    """
    if run is None and (config is None or weights is None):
        raise ConfigError("give --run DIR, or both --config FILE and --weights CHECKPOINT")
    if checkpoint not in ("last", "best"):
        raise ConfigError(f"--checkpoint {checkpoint}: use last or best")
    if checkpoint == "best":
        if run is None or weights is not None:
            raise ConfigError("--checkpoint best picks a checkpoint of --run DIR: give --run without --weights")
        weights = Path(run) / BEST_CHECKPOINT
        if not weights.is_file():
            raise CheckpointError(
                f"{run} holds no {BEST_CHECKPOINT}: it is written at evaluations (train.eval_period, datasets.test) "
                "while train.best.enabled; use --checkpoint last"
            )
    if run is not None and weights is None:
        weights, state = load_run_checkpoint(Path(run))
    elif names_detector_weights(str(weights)):
        state = as_checkpoint(str(weights))
        weights = Path(state["meta"]["source"])
    else:
        weights = Path(weights)
        state = Checkpointer(weights.parent, is_main=False).load(weights)
    meta = state.get("meta") or {}
    # The detector's own weights replace any backbone initialisation: do not fetch ImageNet ones;
    # the normalisation those weights were trained with comes from the checkpoint.
    fmt = meta.get("input_format") or {}
    recorded = [
        f"model.input_format.{k}={json.dumps(fmt[k])}" for k in ("channel_order", "pixel_mean", "pixel_std") if k in fmt
    ]
    recorded += [f"model.backbone.{k}={json.dumps(v)}" for k, v in (meta.get("backbone_options") or {}).items()]
    recorded = [*recorded, *overrides, "model.backbone.weights=null", "model.weights=null"]
    if config is None and state.get("config"):
        cfg = _stored_config(state, weights, Path(run), recorded)
        config = f"the config stored in {weights}"
    else:
        config = config or Path(run) / "config.yaml"
        cfg = load_config(DetectionConfig, config, recorded)
    _check_fits(meta, cfg, weights)
    model = build_detector(cfg, int(meta["num_classes"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise CheckpointError(f"{weights} does not fit the model of {config}: {first}") from None
    model.to(device).eval()
    iteration = state.get("iteration")
    return LoadedDetector(
        model, cfg, meta, weights, int(iteration) if iteration is not None else None, best=state.get("best")
    )


class Predictor:
    """Detections on single images (RGB uint8 arrays) in their original coordinates."""

    def __init__(self, loaded: LoadedDetector, device: torch.device, score_thresh: Optional[float] = None):
        self.cfg = loaded.cfg
        self.class_names: List[str] = list(loaded.meta["class_names"])
        self.device = device
        self.model = prepare_for_inference(
            loaded.model,
            fold_bn=self.cfg.test.fold_frozen_bn,
            channels_last=device.type == "cuda",
            compile_backend=self.cfg.test.compile_backbone,
            precision=resolve_precision(self.cfg.test.precision, device),
        )
        self.score_thresh = self.cfg.model.roi_heads.score_thresh if score_thresh is None else score_thresh

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> Dict[str, np.ndarray]:
        resized, scale = resize_shortest_edge(image, self.cfg.input.min_size_test, self.cfg.input.max_size_test)
        tensor = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).to(self.device)
        out = self.model([tensor])[0]
        keep = out["scores"] >= self.score_thresh
        boxes = (out["boxes"][keep].float() / scale).cpu().numpy()
        h, w = image.shape[:2]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        return {
            "boxes": boxes,
            "scores": out["scores"][keep].float().cpu().numpy(),
            "labels": out["labels"][keep].cpu().numpy(),
        }
