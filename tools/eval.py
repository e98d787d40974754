"""Evaluate a detector, or an existing detections file, with the COCO or PASCAL VOC metric.

Examples:
  python tools/eval.py --results dets.json --gt instances_val2017.json --output out/
  python tools/eval.py --results dets.json --dataset voc_2007_test --data-root datasets/
  python tools/eval.py --run output/voc_r101_c4                  # its newest checkpoint (also while training)
  python tools/eval.py --run output/voc_r101_c4 --checkpoint best  # its model_best.pth
  python tools/eval.py --config configs/voc/faster_rcnn_c4.yaml --weights model_final.pth --dataset voc_2007_test
  torchrun --nproc_per_node=8 tools/eval.py --run output/coco_r101_c4
  python tools/eval.py --compare a/report.json b/report.json --output cmp/   # and cmp/compare.html
  python tools/eval.py --results dets.json --gt val.json --images val_images/ --backend faster-coco-eval --output out/
  python tools/eval.py --model det.onnx --dataset shapes_val     # an exported model (tools/export.py), on the CPU

--results takes COCO results format ([{image_id, category_id, bbox: [x, y, w, h], score}]) with
the dataset's own category ids: COCO's 1..90, VOC's 1..20 in the order aeroplane ... tvmonitor;
on a VOC split the image ids may be the devkit's own ("000001", "2008_000123"), and --results may
be a folder of the devkit's per-class files (comp4_det_test_<class>.txt: "<image id> <score> <xmin>
<ymin> <xmax> <ymax>" per line, 1-based pixels), which --output also writes for a VOC split
(results/VOC<year>/Main/, where the devkit and the evaluation server look).
--metric defaults by dataset: coco for COCO-format data, voc07 (11-point AP) for VOC 2007,
voc10 (area AP) for VOC 2012. Numbers are fractions in 0..1, as pycocotools prints them.
--output receives report.json, report.md, report.html (open it in a browser: summary, sortable
per-class tables, plots, the images with the most errors drawn), pr_curves.png, thresholds.png,
confusion.png, tide.png and detections.json. Besides the metric, every report holds both VOC
metrics, TIDE's error analysis, the confusion matrix at --score-thresh, and precision / recall / F1
at --score-thresh with the best-F1 score and the score reaching --target-precision
(--no-analysis: the metric alone). --backend faster-coco-eval computes the same COCO numbers
faster (equal to pycocotools to 1e-6; pycocotools is the default and the reference).
"""

import argparse
import sys
from pathlib import Path

from resnet_det.cli import add_trust_arg, log_to_stderr, main_guard
from resnet_det.errors import EvaluationError
from resnet_det.evaluation import (
    BACKENDS,
    METRICS,
    compare_reports,
    evaluate_detections,
    evaluate_with_coco_file,
    format_table,
    load_detections,
    write_compare_html,
    write_report,
)
from resnet_det.evaluation.voc_results import RESULT_FILE, read_voc_results, with_voc_image_ids, write_voc_results
from resnet_det.utils.safe_paths import output_name


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("what to evaluate (one of)")
    source.add_argument(
        "--results", metavar="FILE", help="detections in COCO results format, or a folder of VOC per-class files"
    )
    source.add_argument(
        "--run",
        metavar="DIR",
        help="a training output folder: its newest checkpoint, rebuilt from the config stored in it",
    )
    source.add_argument("--config", metavar="FILE", help="a detection config (with --weights)")
    source.add_argument(
        "--model", metavar="FILE", help="an exported model (tools/export.py): .onnx in onnxruntime, .pt in TorchScript"
    )
    source.add_argument("--compare", nargs=2, metavar=("A", "B"), help="print the differences of two report.json files")
    parser.add_argument(
        "--weights",
        metavar="CKPT",
        help="the checkpoint to evaluate with --config; or torchvision's detector: "
        "torchvision:fasterrcnn_resnet50_fpn_coco or its .pth state dict",
    )
    parser.add_argument(
        "--checkpoint",
        choices=("last", "best"),
        default="last",
        help="with --run: its newest checkpoint (last, the default) or model_best.pth (best)",
    )
    parser.add_argument("--gt", metavar="FILE", help="COCO instances file that --results is scored against")
    parser.add_argument("--dataset", metavar="NAME", help="registered split (default: the config's first test set)")
    parser.add_argument(
        "--data-root", metavar="DIR", help="datasets folder (default: $RESNET_DET_DATASETS or ./datasets)"
    )
    parser.add_argument("--metric", choices=METRICS, help="default: coco for COCO-format data, voc07 / voc10 by year")
    parser.add_argument("--output", metavar="DIR", help="folder for the report files (with --run: DIR/eval/NAME)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N, for the model (default: the config's)")
    parser.add_argument("--backend", choices=BACKENDS, default=BACKENDS[0], help="COCOeval implementation")
    parser.add_argument(
        "--score-thresh", type=float, default=0.5, help="score of the operating point and the confusion matrix"
    )
    parser.add_argument(
        "--target-precision", type=float, default=0.9, help="the precision to find the lowest score for (0.9)"
    )
    parser.add_argument("--no-analysis", action="store_true", help="only the metric: no TIDE, thresholds, confusion")
    parser.add_argument("--images", metavar="DIR", help="with --gt: the images folder, to draw the report's gallery")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="the PyTorch model's precision (test.precision): auto = bf16 where the CPU (AVX-512 BF16 / AMX) or GPU "
        "has it natively, else fp32 (default auto)",
    )
    add_trust_arg(parser)
    parser.add_argument("opts", nargs="*", metavar="KEY=VALUE", help="config overrides, for --run / --config")
    args = parser.parse_intermixed_args(argv)

    modes = [m for m in ("results", "run", "config", "model", "compare") if getattr(args, m)]
    if len(modes) != 1:
        parser.error("give exactly one of --results, --run, --config (with --weights), --model or --compare")
    if args.model and args.device not in (None, "cpu"):
        parser.error("--model runs on the CPU (onnxruntime / TorchScript): leave out --device")
    if args.results and bool(args.gt) == bool(args.dataset):
        parser.error("--results needs its ground truth: either --gt FILE or --dataset NAME")
    if args.gt and args.metric not in (None, "coco"):
        parser.error(f"--metric {args.metric} reads VOC records (difficult flags): use --dataset NAME instead of --gt")
    if args.gt and not args.results:
        parser.error("--gt goes with --results")
    if args.results and args.gt and Path(args.results).is_dir():
        parser.error("a folder of VOC result files (--results DIR) is read with its split: --dataset NAME, not --gt")
    if not 0.0 <= args.score_thresh <= 1.0 or not 0.0 < args.target_precision <= 1.0:
        parser.error("--score-thresh must lie in 0..1 and --target-precision in (0, 1]")
    if args.images and not args.gt:
        parser.error("--images goes with --gt (a registered dataset knows its images)")
    if bool(args.config) != bool(args.weights):
        parser.error("--config and --weights go together")
    if (args.results or args.compare) and (args.opts or args.device):
        parser.error("KEY=VALUE overrides and --device apply to a model (--run / --config), not to a results file")
    return args


def _scoring(args) -> dict:
    """The evaluator's keyword arguments the flags choose: backend and analysis."""
    return {
        "backend": args.backend,
        "explain": not args.no_analysis,
        "score_thresh": args.score_thresh,
        "target_precision": args.target_precision,
    }


def evaluate_results(args):
    """The model-free path: an existing detections file against a COCO file or a registered split."""
    if args.gt:
        detections = load_detections(Path(args.results))
        return (
            evaluate_with_coco_file(detections, Path(args.gt), source=args.results, **_scoring(args)),
            detections,
            None,
        )
    from resnet_det.data.catalog import get_dataset

    records, metadata = get_dataset(args.dataset, root=args.data_root)
    results = Path(args.results)
    if results.is_dir():
        detections = read_voc_results(results, records, metadata)
    else:
        detections = with_voc_image_ids(load_detections(results), records)
    report = evaluate_detections(detections, records, metadata, args.metric, source=args.results, **_scoring(args))
    return report, detections, (records, metadata)


def _classes(names) -> str:
    return f"{len(names)} classes ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"


def evaluate_model(args):
    """The model path (--run, or --config with --weights): batched inference, split across
    processes under torchrun, then the metric on rank 0 (other ranks return no report).

    Imported here, not at the top: the --results and --compare paths need neither torch nor a model.
    """
    from backbones.serialization import trust_checkpoints
    from resnet_det.config import config_hash
    from resnet_det.data import BadRecordPolicy, get_dataset, register_from_config
    from resnet_det.engine.distributed import cleanup, init_distributed
    from resnet_det.engine.inference import detect_on_records
    from resnet_det.engine.predictor import load_detector

    overrides = [
        f"test.precision={args.precision}",
        *args.opts,
        *([f"train.device={args.device}"] if args.device else []),
    ]
    overrides += [f"datasets.root={args.data_root}"] if args.data_root else []
    with trust_checkpoints(args.trust_checkpoint):
        loaded = load_detector(
            run=args.run, config=args.config, weights=args.weights, overrides=overrides, checkpoint=args.checkpoint
        )
    print(f"evaluating {loaded.describe()}", file=sys.stderr)
    cfg = loaded.cfg
    register_from_config(cfg.datasets)
    if not args.dataset and not cfg.datasets.test:
        raise EvaluationError(
            f"the config of {loaded.checkpoint} names no test set (datasets.test): give --dataset NAME"
        )
    dataset = args.dataset or cfg.datasets.test[0]
    records, metadata = get_dataset(dataset, root=cfg.datasets.root, policy=BadRecordPolicy.from_config(cfg.datasets))
    if list(loaded.meta["class_names"]) != list(metadata["class_names"]):
        raise EvaluationError(
            f"{loaded.checkpoint} detects {_classes(loaded.meta['class_names'])} but {dataset} has "
            f"{_classes(metadata['class_names'])}: evaluate on a split with the classes it was trained on"
        )

    dist = init_distributed(cfg.train.device, cfg.train.collective_timeout_s)
    try:
        detections = detect_on_records(loaded.model.to(dist.device), cfg, records, metadata, dist.device)
    finally:
        cleanup()
    if not dist.is_main:
        return None, detections, None
    metric = args.metric or cfg.test.metric
    report = evaluate_detections(detections, records, metadata, metric, source=str(loaded.checkpoint), **_scoring(args))
    report.update(checkpoint=str(loaded.checkpoint), config_hash=config_hash(cfg))
    if loaded.best:
        report["best_checkpoint"] = loaded.best
    return report, detections, (records, metadata)


def evaluate_exported(args):
    """An exported model on a split, through the same test loader and metric as --run (one process)."""
    import torch

    from resnet_det.data import BadRecordPolicy, get_dataset, register_from_config
    from resnet_det.data.build import build_detection_test_loader
    from resnet_det.engine.exported_model import ExportedModel
    from resnet_det.engine.inference import run_inference

    model = ExportedModel(Path(args.model))
    print(f"evaluating {model.describe()}", file=sys.stderr)
    cfg = model.config([*args.opts, *([f"datasets.root={args.data_root}"] if args.data_root else [])])
    register_from_config(cfg.datasets)
    if not args.dataset and not cfg.datasets.test:
        raise EvaluationError(
            f"the config stored in {args.model} names no test set (datasets.test): give --dataset NAME"
        )
    dataset = args.dataset or cfg.datasets.test[0]
    records, metadata = get_dataset(dataset, root=cfg.datasets.root, policy=BadRecordPolicy.from_config(cfg.datasets))
    if model.class_names != list(metadata["class_names"]):
        raise EvaluationError(
            f"{args.model} detects {_classes(model.class_names)} but {dataset} has "
            f"{_classes(metadata['class_names'])}: evaluate on a split with the classes it was trained on"
        )
    loader = build_detection_test_loader(cfg, records)
    detections = run_inference(model, loader, metadata["label_to_category_id"], torch.device("cpu"))
    report = evaluate_detections(detections, records, metadata, args.metric or cfg.test.metric, source=args.model)
    report.update(checkpoint=str(args.model), config_hash=model.meta["config_hash"])
    return report, detections, (records, metadata)


@main_guard
def main(argv=None):
    args = parse_args(argv)
    if args.compare:
        print(compare_reports(Path(args.compare[0]), Path(args.compare[1])), end="")
        if args.output:
            print(f"\nwrote {write_compare_html(Path(args.compare[0]), Path(args.compare[1]), Path(args.output))}")
        return
    if args.results:
        report, detections, dataset = evaluate_results(args)
    else:
        report, detections, dataset = evaluate_exported(args) if args.model else evaluate_model(args)
    if report is None:
        return
    print("\n".join(report["cocoeval_summary"]))
    print()
    print(format_table(report), end="")
    output = args.output or (Path(args.run) / "eval" / output_name(report["dataset"]) if args.run else None)
    if output:
        image_root = Path(args.images) if args.images else None
        paths = list(write_report(report, detections, Path(output), image_root=image_root).values())
        if dataset is not None and dataset[1].get("evaluator") == "voc":
            records, metadata = dataset
            folder = Path(output) / "results" / f"VOC{metadata.get('year', '')}" / "Main"
            paths.append(folder / RESULT_FILE.format("<class>"))
            write_voc_results(detections, records, metadata, folder)
        print(f"\nwrote {', '.join(str(p) for p in paths)}")


if __name__ == "__main__":
    log_to_stderr(timestamps=False)
    main()
