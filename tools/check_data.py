"""The data doctor: read a data set as training will and report what is wrong with it.

Examples:
  python tools/check_data.py my_config.yaml                 # every set of datasets.train and datasets.test
  python tools/check_data.py voc_2007_trainval --config configs/voc/faster_rcnn_c4.yaml
  python tools/check_data.py parts_train --config parts.yaml --output output/parts_check

A data set is a registered name (built in, or under datasets.custom of --config), or every one a
config file names; the config's anchors and training sizes are those the boxes are compared with
(without --config: the schema's defaults, the paper's C4 recipe). For each data set the report is
printed and written to <output>/<data set>/: data_report.json, data_report.md and PNG plots
(class_counts, objects_per_image, box_shapes). Flaws are listed with their counts: empty,
duplicate, missing, corrupt and mis-sized images; boxes outside or without area; labels beyond the
class list, absent and rare classes, look-alike class names, model.num_classes against the data,
the background off-by-one; the share of boxes no anchor covers at IoU >= 0.5.
"""

import argparse
from pathlib import Path

from resnet_det.cli import log_to_stderr, main_guard
from resnet_det.data.doctor import config_and_datasets, diagnose, markdown, write_report
from resnet_det.utils.safe_paths import output_name


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", help="a data set name, or a config file (.yaml) whose train and test sets to check")
    parser.add_argument("--config", help="with a data set name: the recipe (anchors, sizes, datasets.custom)")
    parser.add_argument("--output", type=Path, default=Path("output/data_check"), help="where the reports go")
    parser.add_argument("--rare", type=int, default=10, help="a class with fewer boxes than this is rare (default 10)")
    parser.add_argument("--data-root", help="the datasets folder (default: $RESNET_DET_DATASETS or ./datasets)")
    parser.add_argument("opts", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return parser.parse_intermixed_args(argv)


@main_guard
def main(argv=None):
    log_to_stderr(timestamps=False)
    args = parse_args(argv)
    overrides = [*args.opts, *([f"datasets.root={args.data_root}"] if args.data_root else [])]
    cfg, names = config_and_datasets(args.target, args.config, overrides)
    for name in names:
        report, arrays = diagnose(name, cfg, rare=args.rare)
        paths = write_report(report, arrays, args.output / output_name(name))
        print(markdown(report))
        print(f"wrote {', '.join(str(p) for p in paths)}\n")


if __name__ == "__main__":
    main()
