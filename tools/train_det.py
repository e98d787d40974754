"""Fine-tune a Faster R-CNN detector on a ResNet backbone.

Examples:
  python tools/train_det.py                                   # R18-C4 on the built-in shapes data
  python tools/train_det.py --backbone r101 --dataset coco     # the paper's COCO recipe
  python tools/train_det.py --backbone r50 --head fpn --dataset voc
  python tools/train_det.py --train-json a.json --train-images imgs/ --val-json b.json --val-images imgs/
  torchrun --nproc_per_node=8 tools/train_det.py --dataset coco --head fpn
  python tools/train_det.py --output output/run --resume       # continue a stopped run
  python tools/train_det.py --config configs/coco/faster_rcnn_fpn_torchvision.yaml --weights tv_detector.pth \
      --train-json a.json --train-images imgs/  # from torchvision's COCO detector (or torchvision:NAME)

--dataset coco|voc|shapes picks the recipe configs/<dataset>/faster_rcnn_<head>.yaml; any other
name (e.g. voc_2012_trainval, or one of datasets.custom) is used as the training set of the
chosen config. The learning rate follows the linear scaling rule: lr = solver.base_lr *
batch_size * solver.accumulate_steps / solver.reference_batch_size, unless --lr gives it outright.
"""

import argparse
from pathlib import Path

from backbones.serialization import trust_checkpoints
from resnet_det.cli import add_training_args, log_to_stderr, main_guard, training_overrides
from resnet_det.config import DetectionConfig, load_config

# Imported before the config loads: it registers the heads and metrics that load_config checks.
from resnet_det.engine.train_detection import train_detector
from resnet_det.errors import ConfigError
from resnet_det.modeling.torchvision_weights import weights_overrides

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPE_FAMILIES = ("coco", "voc", "shapes")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backbone", help="registered model name: r18 r34 r50 r101 r152 (see tools/model_info.py)")
    parser.add_argument("--dataset", help="coco | voc | shapes (a recipe), or a registered training split")
    parser.add_argument("--head", choices=["c4", "fpn"], help="c4: the paper's design (default); fpn: feature pyramid")
    parser.add_argument("--train-json", metavar="FILE", help="your own COCO-format training annotations")
    parser.add_argument("--train-images", metavar="DIR", help="the images folder of --train-json")
    parser.add_argument("--val-json", metavar="FILE", help="your own COCO-format validation annotations")
    parser.add_argument("--val-images", metavar="DIR", help="the images folder of --val-json")
    add_training_args(parser)
    return parser.parse_intermixed_args(argv)


def build_config(args):
    if args.config and args.dataset in RECIPE_FAMILIES:
        raise ConfigError(
            f"--dataset {args.dataset} picks a recipe, but --config {args.config} is one already: "
            "drop --dataset, or name a registered split (e.g. coco_2017_train)"
        )
    head = args.head or "c4"
    family = args.dataset if args.dataset in RECIPE_FAMILIES else "shapes"
    path = args.config or CONFIGS / family / f"faster_rcnn_{head}.yaml"
    overrides = training_overrides(args, "model.backbone.weights", "datasets.root")
    if args.weights:
        overrides += weights_overrides(args.weights)
    if args.backbone:
        overrides.append(f"model.backbone.name={args.backbone}")
    if args.head:
        overrides.append(f"model.head={args.head}")
    if args.dataset and args.dataset not in RECIPE_FAMILIES:
        overrides.append(f"datasets.train=[{args.dataset}]")
    for split, (ann, images) in {
        "train": (args.train_json, args.train_images),
        "val": (args.val_json, args.val_images),
    }.items():
        if bool(ann) != bool(images):
            raise ConfigError(f"--{split}-json and --{split}-images go together: give both, or neither")
        if ann:
            overrides += [
                f"datasets.custom.custom_{split}.annotations={ann}",
                f"datasets.custom.custom_{split}.images={images}",
            ]
            overrides.append(f"datasets.{'train' if split == 'train' else 'test'}=[custom_{split}]")
    return load_config(DetectionConfig, path, overrides + list(args.opts))


@main_guard
def main(argv=None):
    log_to_stderr()
    args = parse_args(argv)
    cfg = build_config(args)
    with trust_checkpoints(args.trust_checkpoint):
        train_detector(cfg, resume=args.resume, force_unlock=args.force_unlock)


if __name__ == "__main__":
    main()
