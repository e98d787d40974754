"""Bridges to other detection libraries, each optional: a bridge imports its library only when used.

- ``resnet_det.integrations.detectron2``: our backbones as detectron2 backbones (importing it
  registers them in detectron2's ``BACKBONE_REGISTRY``).
- ``resnet_det.integrations.detectron2_weights``: detectron2 Faster R-CNN checkpoints to our run
  folders and back (``tools/convert_weights.py``).
"""

import importlib

from resnet_det.errors import MissingDependencyError

DETECTRON2_INSTALL = "pip install 'git+https://github.com/facebookresearch/detectron2.git'"


def require_detectron2(why: str):
    """``import detectron2``, or a one-line error saying ``why`` it is needed and how to install it."""
    try:
        return importlib.import_module("detectron2")
    except ImportError:
        raise MissingDependencyError(
            f"{why} needs detectron2, which is not installed: {DETECTRON2_INSTALL} "
            "(its Python dependencies: pip install -e .[detectron2])"
        ) from None
