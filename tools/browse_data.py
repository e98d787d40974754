"""Draw the ground truth of N training images as the data loader delivers them, after augmentation.

Examples:
  python tools/browse_data.py my_config.yaml -n 16 --output output/browse
  python tools/browse_data.py parts_train --config parts.yaml -n 8 input.hflip_prob=1.0

The images come from the training loader itself (the config's datasets.train, or the named data
set, with its bad-record policies, resizing, flips and seed; crowd, difficult and box-less images
left out as training leaves them), so a box drawn in the wrong place here is a box the model is
trained on in the wrong place. One PNG per image, <k>_<file name>.png, into --output.
"""

import argparse
import os
from itertools import islice
from pathlib import Path

import cv2

from resnet_det.cli import log_to_stderr, main_guard
from resnet_det.data.build import build_detection_train_loader
from resnet_det.data.catalog import get_datasets
from resnet_det.data.doctor import config_and_datasets
from resnet_det.utils.safe_paths import output_name
from resnet_det.utils.visualization import draw_detections


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", help="a data set name, or a config file (.yaml) whose datasets.train to draw")
    parser.add_argument("--config", help="with a data set name: the recipe (input sizes, flips, datasets.custom)")
    parser.add_argument("-n", type=int, default=16, help="how many images (default 16)")
    parser.add_argument("--output", type=Path, default=Path("output/browse"), help="the folder for the drawings")
    parser.add_argument("opts", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return parser.parse_intermixed_args(argv)


@main_guard
def main(argv=None):
    log_to_stderr(timestamps=False)
    args = parse_args(argv)
    cfg, names = config_and_datasets(args.target, args.config, ["dataloader.num_workers=0", *args.opts])
    if args.target.endswith((".yaml", ".yml")):
        names = list(cfg.datasets.train)
    records, metadata = get_datasets(names, root=cfg.datasets.root, policy=cfg.datasets)
    file_of = {r["image_id"]: r["file_name"] for r in records}
    loader = build_detection_train_loader(cfg, records, batch_size=1)
    args.output.mkdir(parents=True, exist_ok=True)
    written = 0
    for k, (images, targets) in enumerate(islice(loader, args.n)):
        image, target = images[0].permute(1, 2, 0).numpy(), targets[0]
        drawn = draw_detections(image, target["boxes"], target["labels"], class_names=metadata["class_names"])
        stem = os.path.splitext(os.path.basename(file_of[target["image_id"]]))[0]
        cv2.imwrite(str(args.output / f"{k:03d}_{output_name(stem)}.png"), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        written += 1
    print(f"wrote {written} images into {args.output}")


if __name__ == "__main__":
    main()
