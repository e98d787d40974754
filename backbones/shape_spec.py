"""``ShapeSpec``: what a feature map is, in the Backbone contract (docs/architecture.md).

A backbone's ``output_shape()`` maps each feature it returns to its ``ShapeSpec``, so that what is
built on top (the FPN, the RPN, the RoI pooler's scales, the C4 head) reads channels and strides
from one place, as in detectron2's ``Backbone.output_shape()``.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeSpec:
    """A feature map's number of channels and its stride (input pixels per feature-map cell)."""

    channels: int
    stride: int
