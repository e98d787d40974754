"""Datasets, decoding, augmentation, samplers and loaders (see docs/architecture.md, "Dataset records").

The registry (``catalog``) knows the built-in datasets: coco_2017_{train,val},
voc_{2007_trainval,2007_test,2012_trainval,0712_trainval} and shapes_{train,val}; a user's own are
COCO json (``coco``), VOC-style XML (``voc_style``) or YOLO txt (``yolo``), converted into each
other by ``convert`` and checked by the data doctor (``doctor``).
"""

from resnet_det.data.build import build_detection_test_loader, build_detection_train_loader
from resnet_det.data.catalog import (
    dataset_root,
    get_dataset,
    get_datasets,
    list_datasets,
    register_coco_instances,
    register_dataset,
    register_from_config,
    register_voc_style,
    register_yolo,
)
from resnet_det.data.classification import build_classification_loaders
from resnet_det.data.coco import load_coco_json
from resnet_det.data.image_io import read_image
from resnet_det.data.records import RecordStore
from resnet_det.data.sanitize import BadRecordPolicy, SanitizeReport
from resnet_det.data.shapes import ensure_shapes_classification, ensure_shapes_detection
from resnet_det.data.voc import VOC_CLASSES, load_voc_split

__all__ = [
    "BadRecordPolicy",
    "RecordStore",
    "SanitizeReport",
    "VOC_CLASSES",
    "build_classification_loaders",
    "build_detection_test_loader",
    "build_detection_train_loader",
    "dataset_root",
    "ensure_shapes_classification",
    "ensure_shapes_detection",
    "get_dataset",
    "get_datasets",
    "list_datasets",
    "load_coco_json",
    "load_voc_split",
    "read_image",
    "register_coco_instances",
    "register_dataset",
    "register_from_config",
    "register_voc_style",
    "register_yolo",
]
