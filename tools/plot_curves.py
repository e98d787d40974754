"""Plot training and test error against iterations for classification runs (the paper's Fig. 4 and 6).

Examples:
  python tools/plot_curves.py output/cifar_plain56 output/cifar_r56          # the degradation problem
  python tools/plot_curves.py output/cifar_plain20 output/cifar_plain56 --output plain.png

Each run folder is one written by tools/train_cls.py; its metrics.jsonl gives the training error of
each log period (thin line) and the validation top-1 error of each evaluation (bold line), in one
colour per run, labelled with the folder's name.
"""

import argparse
from pathlib import Path

from resnet_det.cli import main_guard
from resnet_det.errors import ConfigError
from resnet_det.evaluation.curves import plot_curves


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folders (--output of train_cls.py)")
    parser.add_argument("--output", type=Path, default=Path("curves.png"), help="PNG to write (default: curves.png)")
    parser.add_argument("--names", nargs="+", metavar="NAME", help="legend names, one per run (default: folder names)")
    return parser.parse_args(argv)


@main_guard
def main(argv=None):
    args = parse_args(argv)
    if args.names and len(args.names) != len(args.runs):
        raise ConfigError(f"--names gives {len(args.names)} names for {len(args.runs)} runs: give one per run")
    plot_curves(args.runs, args.output, args.names or ())
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
