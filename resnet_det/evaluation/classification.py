"""Classification metrics: top-1 / top-5 accuracy and error, centre-crop or the paper's 10-crop.

Errors and accuracies are percentages, as the paper reports them. With 10-crop testing the loader
yields ``N x 10 x C x H x W`` batches; the softmax scores of the ten crops are averaged per image
before ranking (the standard 10-crop protocol of the paper's Table 3). Under
``torchrun`` each rank scores its shard and the counts are summed over ranks, so every rank returns
the metrics of the whole set.
"""

from typing import Dict, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from resnet_det.errors import EvaluationError
from resnet_det.utils.comm import all_gather_object

__all__ = ["topk_correct", "evaluate_classifier"]


def topk_correct(scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """How many rows of ``scores`` (``N x K``) rank their target among the top k, for each k.

    A k larger than the number of classes counts every row as correct (top-5 of a 3-class problem
    is always right), rather than failing as ``Tensor.topk`` would.
    """
    if scores.ndim != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)}: expected N x K and N")
    maxk = min(max(ks), scores.shape[1])
    ranked = scores.topk(maxk, dim=1).indices  # N x maxk, best first
    hits = ranked.eq(targets[:, None])
    return torch.stack([hits[:, : min(k, maxk)].any(dim=1).sum() for k in ks])


@torch.inference_mode()
def evaluate_classifier(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    ten_crop: bool = False,
    channels_last: bool = False,
) -> Dict[str, float]:
    """Score ``model`` on the ``(images, labels)`` batches of ``loader``.

    Returns ``top1_err``, ``top5_err``, ``top1_acc``, ``top5_acc`` (percent), ``loss`` (mean
    cross-entropy of the averaged scores) and ``num_images``. The model is put in eval mode and
    left so; the caller restores training mode.
    """
    model.eval()
    memory_format = torch.channels_last if channels_last and device.type == "cuda" else torch.contiguous_format
    correct = torch.zeros(2, dtype=torch.float64)
    loss_sum, count = 0.0, 0
    for images, labels in loader:
        if len(labels) == 0:  # every image of the batch was unreadable and skipped
            continue
        if ten_crop != (images.ndim == 5):
            raise ValueError(
                f"ten_crop={ten_crop} but the loader yields {images.ndim}-d batches: "
                "10-crop batches are N x 10 x C x H x W"
            )
        num_crops = images.shape[1] if ten_crop else 1
        images = images.flatten(0, 1) if ten_crop else images
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        probs = F.softmax(model(images).float(), dim=1)
        probs = probs.view(len(labels), num_crops, -1).mean(dim=1)
        correct += topk_correct(probs, labels).cpu().double()
        loss_sum += float(F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum"))
        count += len(labels)
    per_rank = all_gather_object((float(correct[0]), float(correct[1]), loss_sum, count))
    top1, top5, loss_sum, count = (sum(values) for values in zip(*per_rank))
    if count == 0:
        raise EvaluationError("the validation set has no readable images: check its folder (data.val_split)")
    top1_acc, top5_acc = 100.0 * top1 / count, 100.0 * top5 / count
    return {
        "top1_err": 100.0 - top1_acc,
        "top5_err": 100.0 - top5_acc,
        "top1_acc": top1_acc,
        "top5_acc": top5_acc,
        "loss": loss_sum / count,
        "num_images": int(count),
    }
