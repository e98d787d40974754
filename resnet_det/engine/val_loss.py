"""The training losses of a detector on test images, beside its detections, in one pass of the data.

``run_inference`` hands each test batch to a :class:`DetectionLossMeter` after detecting on it; the
meter runs the trainable model (not the inference fast path, so the detections are untouched) with
the RPN and RoI heads sampling as in training: anchors and proposals matched to the ground truth,
``batch_size_per_image`` of them drawn at random, from a generator seeded per batch
(``seed``, rank, batch number), so the losses of a model are the same at every evaluation and do
not shift training's random stream. The backbone stays in eval mode (BatchNorm statistics are
neither used from the batch nor updated). Ground truth is the records' boxes as training sees them
(no crowd regions, no ``difficult`` objects unless ``use_difficult``), scaled to the test size.
"""

from collections import OrderedDict, defaultdict
from typing import Dict, List, Mapping

import torch
from torch import nn

from resnet_det.data.build import train_records
from resnet_det.utils import comm

__all__ = ["DetectionLossMeter"]


class DetectionLossMeter:
    """Per-image means of the detector's losses over the batches it is called with (all ranks)."""

    def __init__(self, model: nn.Module, records: List[dict], *, seed: int, use_difficult: bool = False):
        self.model = model
        self.seed = seed
        self.targets = {r["image_id"]: r["annotations"] for r in train_records(records, use_difficult, False)}
        self.sums: Dict[str, float] = defaultdict(float)
        self.images = 0
        self.batches = 0

    def _target(self, info: Mapping, device: torch.device) -> Dict[str, torch.Tensor]:
        anns = self.targets[info["image_id"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4) * float(info["scale"])
        return {
            "boxes": boxes.to(device),
            "labels": torch.tensor([a["label"] for a in anns], dtype=torch.int64).to(device),
        }

    def __call__(self, images: List[torch.Tensor], infos: List[Mapping]) -> None:
        model = self.model
        device = images[0].device
        targets = [self._target(info, device) for info in infos]
        seed = self.seed * 1_000_003 + comm.get_rank() * 10_007 + self.batches
        self.batches += 1
        heads = (model.rpn, model.roi_heads)
        modes = [head.training for head in heads]
        devices = [device] if device.type == "cuda" else []
        try:
            for head in heads:
                head.training = True  # the heads' own flag only: their submodules stay in eval mode
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(seed)
                batch, targets = model.transform(images, targets)
                features = model.backbone(batch.tensors)
                if isinstance(features, torch.Tensor):
                    features = OrderedDict([("0", features)])
                proposals, rpn_losses = model.rpn(batch, features, targets)
                _, roi_losses = model.roi_heads(features, proposals, batch.image_sizes, targets)
        finally:
            for head, mode in zip(heads, modes):
                head.training = mode
        losses = {**rpn_losses, **roi_losses}
        for key, value in losses.items():
            self.sums[key] += float(value) * len(images)
        self.sums["loss"] += float(sum(losses.values())) * len(images)
        self.images += len(images)

    def result(self) -> Dict[str, float]:
        """``{"loss": total, "loss_objectness": ..., ...}``: means per image over every rank."""
        parts = comm.all_gather_object((dict(self.sums), self.images))
        images = sum(n for _, n in parts)
        keys = sorted({k for sums, _ in parts for k in sums})
        return {k: sum(sums.get(k, 0.0) for sums, _ in parts) / images for k in keys} if images else {}
