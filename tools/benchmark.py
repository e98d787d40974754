"""Benchmark our detector against torchvision's stock Faster R-CNN (R50-FPN), in one run.

Examples:
  python tools/benchmark.py                                    # R50-FPN, CPU, all measures
  python tools/benchmark.py --backbone r101 --head c4 --size 600 --proposals 300
  python tools/benchmark.py --only inference train --runs 7 --json bench.json
  python tools/benchmark.py --only inference --compile inductor   # the optional compiled backbone
  python tools/benchmark.py --device cuda --batch 4
  python tools/benchmark.py --only eval-backends --runs 5       # pycocotools vs faster-coco-eval
  python tools/benchmark.py --only data-scale                   # COCO train2017's size: 117,266 / 860,001
  python tools/benchmark.py --only data-scale --images 1000000 --boxes 10000000 --simple-boxes
  python tools/benchmark.py --only inference --precision fp32 bf16 --runtime torch onnxruntime

Measures: inference images/s at --size (short side) with --proposals RPN proposals per image;
one training iteration (forward, backward, SGD step) on --train-batch images at --train-size;
data loading images/s (JPEG decode + augment + collate with --workers); COCO evaluation time;
eval-backends: the same 500 images x 100 detections evaluated by pycocotools and by
faster-coco-eval, timed alternately, and the report's analysis (TIDE, thresholds, confusion);
peak memory (RSS on CPU, max_memory_allocated on GPU). data-scale (not in the default set):
loading a generated, seeded COCO-like file of --images / --boxes (resnet_det/engine/data_scale.py).
Each figure: --warmup runs, then --runs
timed runs, printed as min / median / max; ratios are ours / stock on the medians. The stock
model is torchvision's R50-FPN Faster R-CNN as fasterrcnn_resnet50_fpn sets it up for fine-tuning
(FrozenBatchNorm2d, trainable_backbone_layers=3; ours: frozen BN, freeze_at=2), with random
weights and the same sizes, counts, classes and threads: the same layers train in both.
Random weights: the RPN's NMS is disabled in both so that exactly --proposals boxes reach the
box head. Record results in docs/benchmarks.md with the command and the machine.
"""

import argparse
import json

from resnet_det.cli import main_guard

MEASURES = ("inference", "train", "data", "eval", "eval-backends", "data-scale")


def parse_args(argv=None):
    from resnet_det.engine.benchmark import Settings

    d = Settings()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backbone", default=d.backbone, help=f"registered backbone (default {d.backbone})")
    parser.add_argument("--head", default=d.head, choices=["c4", "fpn"], help=f"detection head (default {d.head})")
    parser.add_argument("--size", type=int, default=d.size, help=f"inference short side in pixels (default {d.size})")
    parser.add_argument("--max-size", type=int, default=d.max_size, help=f"long side cap (default {d.max_size})")
    parser.add_argument(
        "--proposals", type=int, default=d.proposals, help=f"RPN proposals per image (default {d.proposals})"
    )
    parser.add_argument(
        "--detections", type=int, default=d.detections, help=f"detections per image (default {d.detections})"
    )
    parser.add_argument("--batch", type=int, default=d.batch, help=f"inference images per batch (default {d.batch})")
    parser.add_argument(
        "--train-size", type=int, default=d.train_size, help=f"training short side (default {d.train_size})"
    )
    parser.add_argument(
        "--train-batch",
        type=int,
        default=d.train_batch,
        help=f"training images per iteration (default {d.train_batch})",
    )
    parser.add_argument(
        "--workers", type=int, default=d.workers, help=f"data loader worker processes (default {d.workers})"
    )
    parser.add_argument("--threads", type=int, default=d.threads, help=f"torch threads (default {d.threads})")
    parser.add_argument("--warmup", type=int, default=d.warmup, help=f"untimed runs first (default {d.warmup})")
    parser.add_argument("--runs", type=int, default=d.runs, help=f"timed runs (default {d.runs})")
    parser.add_argument("--device", default=d.device, help="cpu | cuda | cuda:N (default cpu)")
    parser.add_argument(
        "--no-fast-path",
        action="store_true",
        help="measure our plain path (no BN folding, channels-last, inference_mode)",
    )
    parser.add_argument(
        "--compile",
        metavar="BACKEND",
        help="also torch.compile our backbone for inference (e.g. inductor; the first warm-up run compiles)",
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=["fp32", "bf16", "int8"],
        default=["fp32"],
        help="inference precisions of ours: bf16 adds a bf16-autocast path (CPUs with AVX-512 BF16/AMX, CUDA); "
        "int8, with --runtime onnxruntime, the ONNX model with int8 fully connected layers",
    )
    parser.add_argument(
        "--runtime",
        nargs="+",
        choices=["torch", "onnxruntime"],
        default=["torch"],
        help="inference runtimes of ours: onnxruntime adds our model exported to ONNX, run on the CPU",
    )
    parser.add_argument(
        "--images", type=int, default=117_266, help="data-scale: images in the generated file (default 117266)"
    )
    parser.add_argument(
        "--boxes", type=int, default=860_001, help="data-scale: boxes in the generated file (default 860001)"
    )
    parser.add_argument("--simple-boxes", action="store_true", help="data-scale: boxes without polygon segmentations")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=MEASURES,
        default=[m for m in MEASURES if m != "data-scale"],
        help="which measures (default: all but data-scale)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return parser.parse_args(argv)


@main_guard
def main(argv=None):
    args = parse_args(argv)
    from resnet_det.engine.benchmark import Settings, format_result, run_benchmarks
    from resnet_det.utils.file_io import atomic_write_text

    settings = Settings(
        backbone=args.backbone,
        head=args.head,
        size=args.size,
        max_size=args.max_size,
        proposals=args.proposals,
        detections=args.detections,
        batch=args.batch,
        train_size=args.train_size,
        train_batch=args.train_batch,
        warmup=args.warmup,
        runs=args.runs,
        threads=args.threads,
        device=args.device,
        fast_path=not args.no_fast_path,
        compile_backend=args.compile,
        workers=args.workers,
        scale_images=args.images,
        scale_boxes=args.boxes,
        scale_polygons=not args.simple_boxes,
        precisions=args.precision,
        runtimes=args.runtime,
    )
    result = run_benchmarks(settings, args.only)
    print(format_result(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
