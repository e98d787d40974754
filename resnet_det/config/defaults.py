"""The typed schema of every config: defaults, types and what each key means.

A YAML recipe in ``configs/`` states only what differs from these defaults (through ``_base_``
inheritance); ``load_config`` merges it onto the schema, so a misspelt key or a value of the wrong
type is an error naming the key, not a silently ignored line. Fixed choices are ``Literal`` types,
which the merge checks; choices that users extend by registering (``model.head``, ``test.metric``)
are strings checked against their registry, and the rules that tie keys together are checked, by
``resnet_det.config.validate`` when ``load_config`` returns.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional

Norm = Literal["bn", "frozen_bn", "gn", "syncbn"]
Shortcut = Literal["A", "B", "C"]
# What to do with a bad record: fix (and count), skip (and count), or stop; which ones each kind
# allows is checked by resnet_det.data.sanitize.BadRecordPolicy.
BadRecordAction = Literal["fix", "skip", "stop"]
WarmupMethod = Literal["linear", "constant"]
NonfiniteLoss = Literal["stop", "skip"]
LrPolicy = Literal["steps", "plateau"]


@dataclass
class BackboneConfig:
    name: str = "r50"  # any registered model name: r18..r152, plain*, cifar_r*, or a user's
    # "imagenet" (torchvision's weights through the torch.hub cache), a .pth state dict, an MSRA
    # .pkl, or a checkpoint of tools/train_cls.py; null = random initialisation.
    weights: Optional[str] = None
    norm: Norm = "frozen_bn"
    freeze_at: int = 2  # 0 = train all; 1 = freeze the stem; k = stem and res2..res<k>
    shortcut: Optional[Shortcut] = None  # null = the model's default (B ImageNet, A CIFAR)
    # null = follow the weights (True for MSRA .pkl, False for torchvision), else True (the paper's).
    stride_in_1x1: Optional[bool] = None


@dataclass
class InputFormatConfig:
    """How images are normalised; null values follow what the loaded weights record."""

    channel_order: Optional[Literal["RGB", "BGR"]] = None
    pixel_mean: Optional[List[float]] = None  # 0..255 scale, in channel_order
    pixel_std: Optional[List[float]] = None


@dataclass
class AnchorConfig:
    # One tuple of sizes per feature map: C4 uses one map, FPN one per level (p2..p6).
    sizes: List[List[int]] = field(default_factory=lambda: [[32, 64, 128, 256, 512]])
    aspect_ratios: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    # Corners rounded to whole pixels (torchvision's); false = exact (detectron2's, offset 0).
    round: bool = True
    # Anchors at each map's stride (detectron2's); false = the padded image side // the map's side,
    # floored (torchvision's: 56, not 64, on FPN's p6 where a side is not a multiple of 64).
    nominal_strides: bool = False


@dataclass
class RPNConfig:
    pre_nms_topk_train: int = 12000
    pre_nms_topk_test: int = 6000
    post_nms_topk_train: int = 2000
    post_nms_topk_test: int = 300  # the paper's 300 proposals per image at test time
    nms_thresh: float = 0.7
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    # (wx, wy, ww, wh): the scale of the box deltas the RPN predicts (both libraries': 1, 1, 1, 1).
    box_reg_weights: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])


@dataclass
class RoIHeadsConfig:
    pooler: Literal["roi_align", "roi_pool"] = "roi_align"  # roi_pool: the paper's
    pooler_resolution: int = 14  # C4: 14 then res5 strides to 7; FPN: 7
    # roi_align with aligned=True (detectron2's ROIAlignV2: pixel centres, not corners, on the grid).
    pooler_aligned: bool = False
    sampling_ratio: int = 0
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    # Detections with a side under this many pixels (after clipping) are dropped: torchvision's
    # 0.01; detectron2 keeps all (0).
    min_box_size: float = 0.01
    fc_dim: int = 1024  # FPN's 2-fc box head
    # (wx, wy, ww, wh): the scale of the box deltas the box predictor outputs (both libraries': 10, 10, 5, 5).
    box_reg_weights: List[float] = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])


@dataclass
class ModelConfig:
    head: str = "c4"  # a registered head (resnet_det.modeling.HEADS): c4 (the paper's design), fpn, or a user's
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    input_format: InputFormatConfig = field(default_factory=InputFormatConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)
    fpn_channels: int = 256
    num_classes: Optional[int] = None  # null = from the training dataset (without background)
    # A whole detector's starting weights, trained elsewhere: torchvision:fasterrcnn_resnet50_fpn_coco
    # (through the torch.hub cache) or a .pth of a torchvision Faster R-CNN state dict; the model
    # must be the one they fit (configs/coco/faster_rcnn_fpn_torchvision.yaml). null = none.
    weights: Optional[str] = None


@dataclass
class CustomDatasetConfig:
    """A user's own data set, in one of three formats (README, "Your own data"); which fields each
    format needs is checked by ``resnet_det.config.validate.check_custom_dataset``.

    coco: ``images`` (folder) and ``annotations`` (instances json).
    voc: ``root`` (holds ``Annotations/``, the images in ``JPEGImages/`` unless ``images`` says
    otherwise, and the ``ImageSets/Main/<split>.txt`` lists); ``split`` null = every XML;
    ``classes`` a names file, null = the names found in the XML (sorted).
    yolo: ``classes`` an ultralytics ``data.yaml`` with ``split`` one of its keys (train, val,
    test), or a names file with ``images`` a folder or a list file; labels are in ``labels/``
    beside ``images/``.
    """

    format: Literal["coco", "voc", "yolo"] = "coco"
    images: Optional[str] = None
    annotations: Optional[str] = None
    root: Optional[str] = None
    split: Optional[str] = None
    classes: Optional[str] = None


@dataclass
class DatasetsConfig:
    root: Optional[str] = None  # null = $RESNET_DET_DATASETS or ./datasets
    train: List[str] = field(default_factory=lambda: ["shapes_train"])
    test: List[str] = field(default_factory=lambda: ["shapes_val"])
    # Own datasets (COCO json, VOC-style XML, YOLO txt) registered by name, usable in train/test.
    custom: Dict[str, CustomDatasetConfig] = field(default_factory=dict)
    # What to do with each kind of bad record: fix (and count), skip (and count), or stop.
    bad_boxes: BadRecordAction = "skip"  # zero/negative size or non-finite boxes
    boxes_outside: BadRecordAction = "fix"  # clipped to the image
    unknown_category: BadRecordAction = "stop"
    missing_image: BadRecordAction = "stop"
    corrupt_image: BadRecordAction = "stop"
    use_difficult: bool = False  # VOC: train on `difficult` objects too


@dataclass
class DetInputConfig:
    min_size_train: List[int] = field(default_factory=lambda: [600])  # several = multi-scale
    max_size_train: int = 1000
    min_size_test: int = 600
    max_size_test: int = 1000
    hflip_prob: float = 0.5
    # Batches are zero-padded to a multiple of this (at least 32, the largest stride). Coarser
    # padding means fewer distinct batch shapes: oneDNN (CPU) and cuDNN benchmark mode prepare
    # every new shape anew, which costs seconds per shape on a CPU.
    size_divisibility: int = 32


@dataclass
class ClsDataLoaderConfig:
    num_workers: int = 2
    pin_memory: bool = True  # used on GPU only


@dataclass
class DataLoaderConfig(ClsDataLoaderConfig):
    aspect_ratio_grouping: bool = True  # batches of images that are all wide or all tall


@dataclass
class SolverConfig:
    base_lr: float = 0.001
    # The batch size that base_lr is given for; lr scales linearly when the batch differs
    # (Goyal et al.): lr = base_lr * batch_size / reference_batch_size.
    reference_batch_size: int = 8
    batch_size: int = 8  # images per iteration, over all processes
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_iter: int = 320000
    steps: List[int] = field(default_factory=lambda: [240000])  # lr divided by `gamma` at each
    gamma: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    # linear (ramp from warmup_factor) | constant (the paper's CIFAR-110 warm-up)
    warmup_method: WarmupMethod = "linear"
    clip_grad_norm: Optional[float] = None
    nonfinite_loss: NonfiniteLoss = "stop"  # skip: drop that step and go on
    # Micro-batches of batch_size images per optimiser step: an effective batch of
    # batch_size * accumulate_steps, which the linear scaling rule and epochs count with.
    accumulate_steps: int = 1


@dataclass
class BestConfig:
    """model_best.pth (and early stopping) follow this metric of the evaluations."""

    enabled: bool = True  # keep model_best.pth (only where the run evaluates)
    # A key of the evaluation's metrics as in metrics.jsonl (e.g. shapes_val/AP50, val/top1_err);
    # null = AP (COCO) or mAP (VOC) of the first test set; val/top1_err for classification.
    metric: Optional[str] = None
    mode: Optional[Literal["max", "min"]] = None  # null = min for errors and losses, else max


@dataclass
class EarlyStoppingConfig:
    patience: int = 0  # evaluations in a row without improvement of train.best.metric; 0 = off
    min_delta: float = 0.0  # what counts as an improvement, in the metric's units


@dataclass
class EMAConfig:
    enabled: bool = False  # keep an exponential moving average of the weights
    decay: float = 0.9998  # per optimiser step
    use_for_eval: bool = True  # evaluations and model_best.pth use the averaged weights


@dataclass
class TrainConfig:
    output_dir: str = "output/run"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # mixed precision (bf16 on GPU where supported, else fp16)
    seed: int = 0
    deterministic: bool = False
    checkpoint_period: int = 5000
    max_checkpoints_kept: int = 3
    eval_period: int = 0  # 0 = evaluate only at the end
    log_period: int = 20
    channels_last: bool = True  # on GPU
    # cuDNN picks the fastest kernels per input shape (GPU; off with `deterministic`). Keep batch
    # shapes few (input.size_divisibility) or it benchmarks anew for every new shape.
    cudnn_benchmark: bool = True
    collective_timeout_s: int = 600  # a dead torchrun worker stops the others after this
    best: BestConfig = field(default_factory=BestConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    # Extra hooks (resnet_det.engine.hooks.HookBase): names registered in engine.hooks.HOOKS or
    # dotted paths (my_package.hooks.MyHook), run in this order before the checkpointer.
    hooks: List[str] = field(default_factory=list)


@dataclass
class DetTrainConfig(TrainConfig):
    compile_backbone: Optional[str] = None  # a torch.compile backend (e.g. inductor); null = eager


@dataclass
class TestConfig:
    batch_size: int = 2
    metric: Optional[str] = (
        None  # a registered metric (resnet_det.evaluation.METRICS): coco | voc07 | voc10; null = by dataset
    )
    fold_frozen_bn: bool = True  # fast path: fold frozen BN into the convolutions for inference
    compile_backbone: Optional[str] = None  # fast path: a torch.compile backend (e.g. inductor); null = eager
    # Evaluations during training also give the RPN and RoI-head losses on the test set (seeded
    # sampling as in training), in the same pass as the detections, which they leave unchanged.
    val_loss: bool = True
    # fp32 | bf16 | auto: bf16 where native (modeling/precision.py). tools/infer.py and eval.py
    # default to auto (--precision); evaluation during training keeps fp32.
    precision: Literal["auto", "fp32", "bf16"] = "fp32"


@dataclass
class DetectionConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    datasets: DatasetsConfig = field(default_factory=DatasetsConfig)
    input: DetInputConfig = field(default_factory=DetInputConfig)
    dataloader: DataLoaderConfig = field(default_factory=DataLoaderConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: DetTrainConfig = field(default_factory=DetTrainConfig)
    test: TestConfig = field(default_factory=TestConfig)


@dataclass
class ClsModelConfig:
    name: str = "cifar_r20"
    num_classes: Optional[int] = None  # null = from the dataset
    shortcut: Optional[Shortcut] = None
    stride_in_1x1: Optional[bool] = None
    zero_init_residual: bool = False
    norm: Norm = "bn"
    weights: Optional[str] = None  # start from these weights (same forms as the detector's)


@dataclass
class ClsDataConfig:
    dataset: str = "shapes"  # shapes | cifar10 | imagenet | folder
    root: Optional[str] = None  # null = $RESNET_DET_DATASETS or ./datasets; `folder`: the folder
    train_split: str = "train"
    val_split: str = "val"
    holdout_val: bool = False  # CIFAR-10: the paper's 45k/5k train/val split from the train set
    skip_bad_images: bool = False  # skip unreadable images with a count, instead of stopping


@dataclass
class ClsInputConfig:
    """Augmentation: `cifar` (pad 4 + crop + flip) or `imagenet` (scale aug + crop + flip + colour)."""

    augment: str = "cifar"
    crop_size: int = 32
    scale_range: List[int] = field(default_factory=lambda: [256, 480])  # imagenet: shorter side
    test_resize: int = 256  # imagenet: shorter side before the centre / 10 crops
    color_jitter: float = 0.4
    pixel_mean: List[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    pixel_std: List[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    ten_crop_test: bool = False
    # per_channel: subtract pixel_mean. per_pixel (the paper's): subtract the training set's mean
    # image (at crop_size, computed when training starts; pixel_mean is then unused), and its
    # channel means go into the checkpoint for detection. Both then divide by pixel_std.
    mean_subtraction: str = "per_channel"


@dataclass
class ClsSolverConfig(SolverConfig):
    base_lr: float = 0.1
    reference_batch_size: int = 128
    batch_size: int = 128
    max_iter: int = 64000
    steps: List[int] = field(default_factory=lambda: [32000, 48000])
    warmup_iters: int = 0
    warmup_factor: float = 0.1  # with warmup_until_error=80: the paper's 0.01 warm-up (110+ layers)
    warmup_method: WarmupMethod = "constant"
    # The paper's ResNet-110 rule: lr * warmup_factor until the running training top-1 error
    # (percent, over the last iterations) is below this; null = warm up for warmup_iters instead.
    warmup_until_error: Optional[float] = None
    # steps: divide by gamma at solver.steps. plateau (the paper's ImageNet rule): divide by gamma
    # when the validation top-1 error (computed every train.eval_period iterations) has not
    # improved by plateau_threshold points for plateau_patience evaluations in a row.
    lr_policy: LrPolicy = "steps"
    plateau_patience: int = 5
    plateau_threshold: float = 0.1
    # Count in epochs instead (ImageNet recipe): when set, max_iter and steps are derived from
    # epochs and step_epochs with the training set's size.
    epochs: Optional[int] = None
    step_epochs: List[int] = field(default_factory=list)


@dataclass
class ClassificationConfig:
    model: ClsModelConfig = field(default_factory=ClsModelConfig)
    data: ClsDataConfig = field(default_factory=ClsDataConfig)
    input: ClsInputConfig = field(default_factory=ClsInputConfig)
    dataloader: ClsDataLoaderConfig = field(default_factory=ClsDataLoaderConfig)
    solver: ClsSolverConfig = field(default_factory=ClsSolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
