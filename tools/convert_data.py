"""Convert a detection data set between COCO json, VOC-style XML folders and YOLO txt labels.

Examples:
  python tools/convert_data.py --from yolo --classes data/parts/data.yaml --split train --to coco --output parts_coco
  python tools/convert_data.py --from voc --root data/parts_voc --split trainval --to yolo --output parts_yolo
  python tools/convert_data.py --from coco --images imgs/ --annotations train.json --to voc --output parts_voc

The input options are the fields of datasets.custom for that format (README, "Your own data"):
coco takes --images and --annotations; voc --root, and optionally --split, --classes, --images;
yolo --classes (a data.yaml with --split, or a names file with --images). The data set is read as
training reads it (bad records by the schema's policies, counted and printed), then written in the
target's layout into --output, a new folder; --output-split names the split there (VOC's
ImageSets/Main/<split>.txt, YOLO's images/<split>). Boxes come back exactly from COCO and VOC, and
within 1e-6 of the image size from YOLO's 6-decimal fractions.
"""

import argparse

from resnet_det.cli import log_to_stderr, main_guard
from resnet_det.config.validate import check_custom_dataset
from resnet_det.data.catalog import get_dataset, register_custom
from resnet_det.data.convert import FORMATS, convert_records


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--from", dest="source", choices=FORMATS, required=True, help="the input's format")
    parser.add_argument("--to", dest="target", choices=FORMATS, required=True, help="the output's format")
    parser.add_argument("--output", required=True, help="a new (or empty) folder to write the converted data set into")
    parser.add_argument("--images", help="coco: images folder; voc: images folder (default <root>/JPEGImages); "
                        "yolo: images folder or list file (with a names file)")  # fmt: skip
    parser.add_argument("--annotations", help="coco: the instances json")
    parser.add_argument("--root", help="voc: the folder with Annotations/ (and JPEGImages/, ImageSets/Main/)")
    parser.add_argument("--split", help="voc: ImageSets/Main/<split>.txt (default: every XML); yolo: data.yaml's key")
    parser.add_argument("--classes", help="voc: names file (default: from the XML); yolo: data.yaml or names file")
    parser.add_argument("--output-split", help="the split's name in the output (default: --split, else train)")
    return parser.parse_args(argv)


@main_guard
def main(argv=None):
    log_to_stderr(timestamps=False)
    args = parse_args(argv)
    entry = {
        "format": args.source,
        **{k: getattr(args, k) for k in ("images", "annotations", "root", "split", "classes")},
    }
    check_custom_dataset("input", entry, where=f"convert_data.py --from {args.source}")
    name = f"{args.source}:{args.annotations or args.root or args.classes}:{args.split}:{args.images}"
    register_custom(name, entry)
    records, metadata = get_dataset(name)
    print(f"read {len(records)} images, {sum(len(r['annotations']) for r in records)} boxes, "
          f"{len(metadata['class_names'])} classes; {metadata['sanitize_counts'].summary()}")  # fmt: skip
    notes = convert_records(
        records, metadata["class_names"], args.target, args.output, args.output_split or args.split or "train"
    )
    for note, count in sorted(notes.items()):
        print(f"note: {count} {note}")
    print(f"wrote {args.target} into {args.output}")


if __name__ == "__main__":
    main()
