"""Export a trained detector to ONNX (for onnxruntime) or TorchScript, with its metadata.

Examples:
  python tools/export.py --run output/demo/det --format onnx --output det.onnx
  python tools/export.py --run output/demo/det --format torchscript --output det.pt
  python tools/export.py --config configs/coco/faster_rcnn_c4.yaml --weights model_final.pth --format onnx --output c4.onnx

The file holds the whole inference of one image: a uint8 3 x H x W RGB image of any height and
width in (resized by the caller to the config's test size; tools/infer.py --model does that), its
normalisation, and boxes (x0, y0, x1, y1 in that image's pixels), labels and scores out. Batch
size 1: run a batch image by image. It carries the class names, category ids, input format and
config (with its hash): ONNX metadata_props, or the TorchScript archive's resnet_det.json.
Run it with tools/infer.py --model FILE or tools/eval.py --model FILE. ONNX needs the export
extra (pip install -e .[export]: onnx, onnxruntime).
"""

import argparse
import sys
from pathlib import Path

from backbones.serialization import trust_checkpoints
from resnet_det.cli import add_trust_arg, main_guard
from resnet_det.engine.export import DEFAULT_OPSET, FORMATS, MAX_OPSET, MIN_OPSET, check_opset, export_model
from resnet_det.engine.predictor import load_detector
from resnet_det.errors import ConfigError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", metavar="DIR", help="a train_det.py output folder: its newest checkpoint")
    parser.add_argument("--config", metavar="FILE", help="a detection config (with --weights)")
    parser.add_argument("--weights", metavar="CKPT", help="a detection checkpoint (with --config, or one of --run's)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="onnx (onnxruntime) or torchscript")
    parser.add_argument("--output", required=True, metavar="FILE", help="the file to write (e.g. det.onnx, det.pt)")
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="ONNX only: the fully connected layers (box head) in int8, onnxruntime's dynamic quantisation",
    )
    add_trust_arg(parser)
    parser.add_argument("opts", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. input.min_size_test=800")
    return parser.parse_intermixed_args(argv)


@main_guard
def main(argv=None):
    args = parse_args(argv)
    if not args.run and not (args.config and args.weights):
        raise ConfigError("give --run DIR, or both --config FILE and --weights CHECKPOINT")
    if args.format == "onnx":
        check_opset(args.opset)
    with trust_checkpoints(args.trust_checkpoint):
        loaded = load_detector(run=args.run, config=args.config, weights=args.weights, overrides=args.opts)
    print(f"exporting {loaded.describe()}", file=sys.stderr)
    path = export_model(loaded, args.format, Path(args.output), args.opset, args.int8)
    print(f"wrote {path} ({args.format}{', int8' if args.int8 else ''}, {path.stat().st_size / 2**20:.1f} MB)")


if __name__ == "__main__":
    main()
