"""Loading a trained detector back (from a run folder or a config + checkpoint) and predicting.

A detection checkpoint carries its resolved config and ``meta`` (classes, category ids, input
format), so ``--run DIR`` alone is enough to rebuild the model. A checkpoint that does not fit the
config (another backbone, head or number of classes) is refused with a message naming both.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from resnet_det.config import DetectionConfig, load_config
from resnet_det.data.transforms import resize_shortest_edge
from resnet_det.engine.checkpoint import Checkpointer
from resnet_det.errors import CheckpointError, ConfigError
from resnet_det.modeling import build_detector, prepare_for_inference


@dataclass
class LoadedDetector:
    model: torch.nn.Module
    cfg: DictConfig
    meta: Dict
    checkpoint: Path


def find_run_checkpoint(run_dir: Path) -> Path:
    """``model_final.pth`` if the run finished, else the newest complete checkpoint."""
    if not run_dir.is_dir():
        raise ConfigError(f"--run {run_dir}: no such folder; give the --output folder of a train_det.py run")
    final = run_dir / "model_final.pth"
    if final.is_file():
        return final
    latest = Checkpointer(run_dir, is_main=False).latest()
    if latest is None:
        raise CheckpointError(f"{run_dir} holds no checkpoint (model_final.pth or last_checkpoint): has training started?")
    return latest


def _check_fits(meta: Dict, cfg: DictConfig, path: Path) -> None:
    if meta.get("kind") != "detection":
        raise CheckpointError(
            f"{path} is a {meta.get('kind', 'unknown')} checkpoint, not a detector: pass it to train_det.py --weights to fine-tune it"
        )
    for what, ours in (("arch", cfg.model.backbone.name), ("head", cfg.model.head)):
        if meta.get(what) != ours:
            raise CheckpointError(
                f"{path} was trained with {what}={meta.get(what)} but the config says {ours}: "
                f"use the run's own config.yaml (or --run), or set model.{'backbone.name' if what == 'arch' else 'head'}={meta.get(what)}"
            )


def load_detector(
    run: Optional[Path] = None,
    config: Optional[Path] = None,
    weights: Optional[Path] = None,
    overrides=(),
    device: torch.device = torch.device("cpu"),
) -> LoadedDetector:
    """The detector of a run (``run``) or of ``config`` + ``weights``, in eval mode on ``device``."""
    if run is not None:
        run = Path(run)
        config = config or run / "config.yaml"
        weights = weights or find_run_checkpoint(run)
    if config is None or weights is None:
        raise ConfigError("give --run DIR, or both --config FILE and --weights CHECKPOINT")
    weights = Path(weights)
    state = Checkpointer(weights.parent, is_main=False).load(weights)
    meta = state.get("meta") or {}
    # The detector's own weights replace any backbone initialisation: do not fetch ImageNet ones;
    # the normalisation those weights were trained with comes from the checkpoint.
    fmt = meta.get("input_format") or {}
    recorded = [f"model.input.{k}={json.dumps(fmt[k])}" for k in ("channel_order", "pixel_mean", "pixel_std") if k in fmt]
    cfg = load_config(DetectionConfig, config, [*recorded, *overrides, "model.backbone.weights=null"])
    _check_fits(meta, cfg, weights)
    model = build_detector(cfg, int(meta["num_classes"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise CheckpointError(f"{weights} does not fit the model of {config}: {first}") from None
    model.to(device).eval()
    return LoadedDetector(model, cfg, meta, weights)


class Predictor:
    """Detections on single images (RGB uint8 arrays) in their original coordinates."""

    def __init__(self, loaded: LoadedDetector, device: torch.device, score_thresh: Optional[float] = None):
        self.cfg = loaded.cfg
        self.class_names: List[str] = list(loaded.meta["class_names"])
        self.device = device
        self.model = prepare_for_inference(
            loaded.model, fold_bn=self.cfg.test.fold_frozen_bn, channels_last=device.type == "cuda",
            compile_backend=self.cfg.test.compile_backbone,
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
