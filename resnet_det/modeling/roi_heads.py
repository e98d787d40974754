"""torchvision's RoI heads with the smallest kept detection as an option (``model.roi_heads.min_box_size``).

torchvision drops detections with a side under 0.01 px after clipping; detectron2 keeps every one
(a proposal clipped to a sliver of the border included), so a detector converted from detectron2
sets 0. Everything else is torchvision's ``postprocess_detections``.
"""

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads as _TorchvisionRoIHeads
from torchvision.ops import boxes as box_ops


class RoIHeads(_TorchvisionRoIHeads):
    """``RoIHeads`` whose detections keep boxes with both sides at least ``min_box_size`` pixels."""

    def __init__(self, *args, min_box_size: float = 1e-2, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_box_size = min_box_size

    def postprocess_detections(
        self, class_logits: Tensor, box_regression: Tensor, proposals: List[Tensor], image_shapes: List[Tuple[int, int]]
    ) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        num_classes = class_logits.shape[-1]
        counts = [len(p) for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals).split(counts, 0)
        pred_scores = F.softmax(class_logits, -1).split(counts, 0)
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, image_shape in zip(pred_boxes, pred_scores, image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            labels = torch.arange(num_classes, device=class_logits.device).view(1, -1).expand_as(scores)
            # every (proposal, class) pair but background's is a candidate
            boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = box_ops.remove_small_boxes(boxes, min_size=self.min_box_size)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels
