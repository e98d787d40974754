"""Print a model's parameters and multiply-adds (the complexity measure of the paper's Table 1).

    python tools/model_info.py r50
    python tools/model_info.py r50 --no-stride-in-1x1       # torchvision's layout: 4.1 G instead of 3.9 G
    python tools/model_info.py cifar_r110 --json
    python tools/model_info.py r101 --input-size 600

The model is built on the meta device: nothing is allocated or computed, so any depth is instant.
"""

import argparse
import json

import torch

from backbones import build_model
from backbones.complexity import count_multiply_adds, count_parameters
from resnet_det.cli import main_guard


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="model name: r18..r152, plain18..plain152, cifar_r20.., cifar_plain20..")
    parser.add_argument("--input-size", type=int, help="side of the square input (default 224, CIFAR nets 32)")
    parser.add_argument("--num-classes", type=int, help="outputs of the fc layer (default 1000, CIFAR nets 10)")
    parser.add_argument("--shortcut", choices=("A", "B", "C"), help="default B (CIFAR nets A)")
    parser.add_argument(
        "--stride-in-1x1",
        action=argparse.BooleanOptionalAction,
        help="bottlenecks downsample in the first 1x1 (the paper's; default) or in the 3x3 (torchvision's)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


@main_guard
def main(argv=None) -> None:
    args = parse_args(argv)
    with torch.device("meta"):
        model = build_model(
            args.name, num_classes=args.num_classes, shortcut=args.shortcut, stride_in_1x1=args.stride_in_1x1
        )
    input_size = args.input_size or getattr(model, "input_size", 224)
    info = {
        "model": args.name,
        "options": getattr(model, "options", {}),
        "input_size": input_size,
        "parameters": count_parameters(model),
        "multiply_adds": count_multiply_adds(model, input_size),
    }
    if args.json:
        print(json.dumps(info))
        return
    options = ", ".join(f"{key} {value}" for key, value in info["options"].items())
    print(f"{args.name}" + (f" ({options})" if options else ""))
    parameters, mult_adds = info["parameters"], info["multiply_adds"]
    print(f"  parameters     {parameters:>15,}  ({parameters / 1e6:.2f} M)")
    print(f"  multiply-adds  {mult_adds:>15,}  ({mult_adds / 1e9:.2f} G at {input_size}x{input_size})")


if __name__ == "__main__":
    main()
