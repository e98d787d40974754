"""Batched inference over a test loader, producing COCO-format detections.

The test loader hands each process its own shard of the images (resized once, in the workers);
the model returns boxes in the resized frame, which are mapped back to the original image here.
Under ``torchrun`` the shards are gathered on every rank, so rank 0 can evaluate them all.
"""

import logging
from typing import Callable, Dict, Iterable, List, Mapping, Optional

import torch
from tqdm import tqdm

from resnet_det.data.build import build_detection_test_loader, unreadable_files
from resnet_det.modeling import prepare_for_inference
from resnet_det.modeling.precision import resolve_precision
from resnet_det.utils import comm

logger = logging.getLogger(__name__)


def detections_to_coco(
    output: Mapping[str, torch.Tensor], info: Mapping, label_to_category_id: Mapping[int, int]
) -> List[Dict]:
    """One image's model output (resized frame) -> COCO results in the original image's frame."""
    boxes = output["boxes"].float().cpu() / float(info["scale"])
    h, w = info["orig_size"]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = output["scores"].float().cpu().tolist()
    labels = output["labels"].cpu().tolist()
    return [
        {
            "image_id": int(info["image_id"]),
            "category_id": int(label_to_category_id[int(label)]),
            "bbox": [round(v, 3) for v in box],
            "score": round(float(score), 5),
        }
        for box, score, label in zip(xywh, scores, labels)
    ]


def run_inference(
    model: torch.nn.Module,
    loader: Iterable,
    label_to_category_id: Mapping[int, int],
    device: torch.device,
    progress: bool = True,
    on_batch: Optional[Callable[[List[torch.Tensor], List[Mapping]], None]] = None,
) -> List[Dict]:
    """Detections of ``model`` on every image of ``loader`` (all ranks' shards, gathered);
    ``on_batch(images, infos)`` then sees each batch on the device (e.g. for validation losses)."""
    model.eval()
    non_blocking = device.type == "cuda"
    results: List[Dict] = []
    bar = tqdm(
        loader,
        desc="inference",
        unit="batch",
        disable=not progress or not comm.is_main_process(),
        dynamic_ncols=True,
    )
    with torch.inference_mode():
        for images, infos in bar:
            if not images:
                continue  # every image of the batch was skipped as unreadable: nothing to detect
            images = [im.to(device, non_blocking=non_blocking) for im in images]
            for output, info in zip(model(images), infos):
                results.extend(detections_to_coco(output, info, label_to_category_id))
            if on_batch is not None:
                on_batch(images, infos)
    if comm.get_world_size() > 1:
        results = [d for part in comm.all_gather_object(results) for d in part]
    results.sort(key=lambda d: (d["image_id"], -d["score"]))
    return results


def detect_on_records(
    model: torch.nn.Module,
    cfg,
    records: List[Dict],
    metadata: Mapping,
    device: torch.device,
    progress: bool = True,
    on_batch: Optional[Callable[[List[torch.Tensor], List[Mapping]], None]] = None,
) -> List[Dict]:
    """Detections of ``model`` on ``records`` through the test loader and the inference fast path
    (``cfg.test``), each rank taking its shard. ``model`` itself is left as it was (trainable).
    ``on_batch``: as in ``run_inference``."""
    loader = build_detection_test_loader(cfg, records, rank=comm.get_rank(), world_size=comm.get_world_size())
    fast = prepare_for_inference(
        model,
        fold_bn=cfg.test.fold_frozen_bn,
        channels_last=device.type == "cuda",
        compile_backend=cfg.test.compile_backbone,
        precision=resolve_precision(cfg.test.precision, device),
    )
    detections = run_inference(
        fast, loader, metadata["label_to_category_id"], device, progress=progress, on_batch=on_batch
    )
    skipped = unreadable_files([loader.dataset])
    if skipped:
        logger.warning(
            "%d images of %s could not be decoded and have no detections (datasets.corrupt_image=skip): %s",
            len(skipped),
            metadata.get("name", "the test set"),
            ", ".join(skipped[:3]),
        )
    return detections
