"""Run a trained detector on an image, a folder of images or a video; draw and save the detections.

Examples:
  python tools/infer.py --run output/demo/det --input photo.jpg --output out/
  python tools/infer.py --config configs/coco/faster_rcnn_c4.yaml --weights model_final.pth --input imgs/ --output out/
  python tools/infer.py --run output/demo/det --input clip.mp4 --output out/ --score-thresh 0.7
  python tools/infer.py --model det.onnx --input imgs/ --output out/     # an exported model (tools/export.py)

Writes, into --output: each image with its boxes, class names and scores drawn (a video is
written as <name>_detections.mp4), and detections.json: per image (or video frame) the boxes
[x0, y0, x1, y1] in pixels, the scores, the labels and the class names.
"""

import argparse
import json
import sys
from pathlib import Path

from backbones.serialization import trust_checkpoints
from resnet_det.cli import add_trust_arg, main_guard
from resnet_det.engine.distributed import resolve_device
from resnet_det.engine.file_inference import IMAGE_SUFFIXES, VIDEO_SUFFIXES, infer_images, infer_video
from resnet_det.engine.predictor import Predictor, load_detector
from resnet_det.errors import ConfigError, DatasetError
from resnet_det.utils.file_io import atomic_write_text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--run",
        metavar="DIR",
        help="a train_det.py output folder: its newest checkpoint, rebuilt from the config stored in it",
    )
    parser.add_argument("--config", metavar="FILE", help="a detection config (with --weights)")
    parser.add_argument(
        "--weights",
        metavar="CKPT",
        help="a detection checkpoint (with --config, or to pick one of --run's); or torchvision's detector: "
        "torchvision:fasterrcnn_resnet50_fpn_coco or its .pth state dict",
    )
    parser.add_argument(
        "--checkpoint",
        choices=("last", "best"),
        default="last",
        help="with --run: its newest checkpoint (last, the default) or model_best.pth (best)",
    )
    parser.add_argument(
        "--model",
        metavar="FILE",
        help="an exported model instead (tools/export.py): FILE.onnx runs in onnxruntime, FILE.pt in TorchScript (CPU)",
    )
    parser.add_argument("--input", required=True, help="an image, a folder of images, or a video file")
    parser.add_argument("--output", required=True, metavar="DIR", help="where the drawn images and detections.json go")
    parser.add_argument(
        "--score-thresh", type=float, default=0.5, help="keep detections scoring at least this (default 0.5)"
    )
    parser.add_argument(
        "--max-images", type=int, metavar="N", help="with a folder: only its first N images (sorted by name)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="the PyTorch model's precision (test.precision): auto = bf16 where the CPU (AVX-512 BF16 / AMX) or GPU "
        "has it natively, else fp32 (default auto)",
    )
    add_trust_arg(parser)
    parser.add_argument("opts", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. input.min_size_test=800")
    return parser.parse_intermixed_args(argv)


def exported_predictor(path: Path, overrides, score_thresh: float) -> Predictor:
    from resnet_det.engine.exported_model import ExportedModel, ExportedPredictor

    model = ExportedModel(path)
    print(f"detecting with {model.describe()}", file=sys.stderr)
    return ExportedPredictor(model, model.config(overrides), score_thresh=score_thresh)


@main_guard
def main(argv=None):
    args = parse_args(argv)
    if bool(args.model) == bool(args.run or args.config):
        raise ConfigError("give --run DIR, or both --config FILE and --weights CHECKPOINT, or --model FILE")
    if not args.model and not (args.run or (args.config and args.weights)):
        raise ConfigError("give --run DIR, or both --config FILE and --weights CHECKPOINT")
    source = Path(args.input)
    if not source.exists():
        raise DatasetError(f"--input {source}: no such file or folder")
    if args.model:
        predictor = exported_predictor(Path(args.model), args.opts, args.score_thresh)
    else:
        device = resolve_device(args.device)
        with trust_checkpoints(args.trust_checkpoint):
            loaded = load_detector(
                run=args.run,
                config=args.config,
                weights=args.weights,
                overrides=[f"test.precision={args.precision}", *args.opts],
                device=device,
                checkpoint=args.checkpoint,
            )
        print(f"detecting with {loaded.describe()}", file=sys.stderr)
        predictor = Predictor(loaded, device, score_thresh=args.score_thresh)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: args.max_images]
        if not paths:
            raise DatasetError(f"--input {source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        results = infer_images(predictor, paths, output, args.score_thresh)
    elif source.suffix.lower() in VIDEO_SUFFIXES:
        results = infer_video(predictor, source, output, args.score_thresh)
    else:
        results = infer_images(predictor, [source], output, args.score_thresh)
    atomic_write_text(output / "detections.json", json.dumps(results, indent=1) + "\n")
    found = sum(len(r["boxes"]) for r in results)
    print(
        f"{found} detections in {len(results)} {'frames' if source.suffix.lower() in VIDEO_SUFFIXES else 'images'}; written to {output}"
    )


if __name__ == "__main__":
    main()
