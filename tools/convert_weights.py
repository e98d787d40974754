"""Convert detectors between detectron2 and resnet-det (detectron2 must be installed).

  python tools/convert_weights.py --from detectron2 --config faster_rcnn_R_50_FPN_3x.yaml \\
      model_final_280758.pkl --output output/d2_r50_fpn
  python tools/eval.py --run output/d2_r50_fpn
  python tools/convert_weights.py --to detectron2 --run output/my_run --output d2_export/

--from detectron2: a detectron2 Faster R-CNN (R50/R101 and the other ResNets, C4 or FPN), its
model zoo model_final_*.pkl or a .pth of its trainer, with the config it was trained with,
becomes a run folder (config.yaml, model_final.pth) for eval.py --run and infer.py --run.
--to detectron2: a run folder of ours (c4 or fpn head) becomes model_final.pkl and the detectron2
config.yaml that builds the same detector (MODEL.WEIGHTS points at the .pkl), for detectron2's
DetectionCheckpointer.
"""

import argparse
from pathlib import Path

from backbones.serialization import trust_checkpoints
from resnet_det.cli import add_trust_arg, log_to_stderr, main_guard
from resnet_det.errors import ConfigError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="source", choices=("detectron2",), help="convert a detectron2 checkpoint")
    direction.add_argument("--to", dest="target", choices=("detectron2",), help="convert a run folder of ours")
    parser.add_argument("checkpoint", nargs="?", metavar="IN", help="--from: the detectron2 checkpoint (.pkl or .pth)")
    parser.add_argument(
        "--config", metavar="D2_YAML", help="--from: the detectron2 config the checkpoint was trained with"
    )
    parser.add_argument("--run", metavar="DIR", help="--to: our run folder (its newest checkpoint)")
    parser.add_argument(
        "--output", required=True, metavar="DIR", help="the run folder (--from) or the export folder (--to)"
    )
    add_trust_arg(parser)
    return parser.parse_args(argv)


@main_guard
def main(argv=None):
    args = parse_args(argv)
    log_to_stderr(timestamps=False)
    from resnet_det.integrations.detectron2_runs import convert_from_detectron2, convert_to_detectron2

    with trust_checkpoints(args.trust_checkpoint):
        if args.source:
            if not args.config or not args.checkpoint or args.run:
                raise ConfigError("--from detectron2 takes --config D2_YAML, the checkpoint IN and --output RUN_DIR")
            path = convert_from_detectron2(Path(args.config), Path(args.checkpoint), Path(args.output))
            print(f"wrote {path}; use it with: python tools/eval.py --run {args.output}")
        else:
            if not args.run or args.checkpoint or args.config:
                raise ConfigError("--to detectron2 takes --run RUN_DIR and --output DIR")
            weights, config = convert_to_detectron2(Path(args.run), Path(args.output))
            print(f"wrote {weights} and {config}; load them in detectron2 with cfg.merge_from_file('{config}')")


if __name__ == "__main__":
    main()
