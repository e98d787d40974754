"""Train a ResNet classifier (ImageNet, CIFAR-10, the built-in shapes, or your own image folders).

Examples:
  python tools/train_cls.py                                        # the built-in shapes set (generated)
  python tools/train_cls.py --dataset cifar10 --model cifar_r56 --output output/cifar_r56      # section 4.2
  python tools/train_cls.py --dataset cifar10 --model cifar_plain56 --output output/cifar_plain56
  python tools/train_cls.py --config configs/classification/cifar10_r110.yaml   # 110+ layers: warm-up
  python tools/train_cls.py --dataset imagenet --model r50         # section 3.4: lr /10 on plateaus
  python tools/train_cls.py --config configs/classification/imagenet_r50_torchvision.yaml   # 90 epochs
  python tools/train_cls.py --dataset folder --data-root DIR        # DIR/{train,val}/<class>/*.jpg
  torchrun --nproc_per_node=8 tools/train_cls.py --dataset imagenet --model r50
  python tools/train_cls.py --output output/run --resume            # continue a stopped run
  python tools/plot_curves.py output/cifar_plain56 output/cifar_r56   # training / test error curves

Without --config the recipe follows --dataset: configs/classification/imagenet_r50.yaml,
cifar10_resnet.yaml, or shapes.yaml (shapes and folder). Nets of 110 layers and more need the
paper's warm-up (lr 0.01 until the training error is below 80%): use --config
configs/classification/cifar10_r110.yaml
(with --model for deeper ones); data.holdout_val=true trains on 45k CIFAR-10 images and validates
on the other 5k, as the paper tunes. Data: <data-root>/imagenet/{train,val}/<class>/*.JPEG,
<data-root>/cifar10/cifar-10-batches-py/. The learning rate follows the linear scaling rule
(lr = solver.base_lr * batch_size * solver.accumulate_steps / solver.reference_batch_size) unless --lr
gives it outright.
The checkpoints (model_final.pth) are backbone weights for train_det.py --weights.
"""

import argparse
import logging
from pathlib import Path

from backbones.serialization import trust_checkpoints
from resnet_det.cli import add_training_args, log_to_stderr, main_guard, training_overrides
from resnet_det.config import ClassificationConfig, load_config
from resnet_det.errors import ConfigError

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "classification"
RECIPE_OF_DATASET = {
    "imagenet": "imagenet_r50.yaml",
    "cifar10": "cifar10_resnet.yaml",
    "shapes": "shapes.yaml",
    "folder": "shapes.yaml",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", help="registered model name: r18..r152, plain18.., cifar_r20..cifar_r1202, cifar_plain20.."
    )
    parser.add_argument(
        "--dataset", choices=sorted(RECIPE_OF_DATASET), help="the data (and, without --config, the recipe)"
    )
    parser.add_argument("--epochs", type=int, metavar="N", help="train for N epochs (instead of --max-iter)")
    add_training_args(parser)
    # Intermixed: KEY=VALUE overrides may come before, between or after the flags.
    return parser.parse_intermixed_args(argv)


def build_config(args):
    if args.epochs is not None and args.max_iter is not None:
        raise ConfigError("--epochs and --max-iter both set the length of training: give one of them")
    path = args.config or RECIPES / RECIPE_OF_DATASET[args.dataset or "shapes"]
    overrides = training_overrides(args, "model.weights", "data.root")
    if args.max_iter is not None:
        overrides.append("solver.epochs=null")  # an iteration count replaces the recipe's epochs
    if args.epochs is not None:
        if args.epochs <= 0:
            raise ConfigError(f"--epochs {args.epochs}: give a positive number of epochs")
        overrides.append(f"solver.epochs={args.epochs}")
    if args.model:
        overrides.append(f"model.name={args.model}")
    if args.dataset:
        overrides.append(f"data.dataset={args.dataset}")
    return load_config(ClassificationConfig, path, overrides + list(args.opts))


@main_guard
def main(argv=None):
    log_to_stderr()
    args = parse_args(argv)
    cfg = build_config(args)
    from resnet_det.engine.train_classification import train_classifier
    from resnet_det.utils.comm import is_main_process

    with trust_checkpoints(args.trust_checkpoint):
        results = train_classifier(cfg, resume=args.resume, force_unlock=args.force_unlock)
    if is_main_process() and "val/top1_err" in results:
        logging.getLogger("train_cls").info(
            "done: %s/model_final.pth, val top-1 error %.2f%%, top-5 error %.2f%%",
            cfg.train.output_dir,
            results["val/top1_err"],
            results["val/top5_err"],
        )


if __name__ == "__main__":
    main()
