"""What every command-line tool shares: one-line errors instead of tracebacks."""

import functools
import logging
import sys

from resnet_det.errors import USER_ERRORS


def user_message(error: BaseException) -> str:
    """The error's own one line, also when a DataLoader worker raised it: PyTorch re-raises those
    in the main process with the worker's whole traceback in the message, the original last."""
    text = str(error).strip()
    lines = text.splitlines()
    if lines and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        prefix = f"{type(error).__module__}.{type(error).__qualname__}: "
        last = lines[-1]
        return last[len(prefix) :] if last.startswith(prefix) else last
    return text


def main_guard(main):
    """Run ``main``; print a user error as ``error: <message>`` and exit with status 2.

    An error that carries its own ``exit_status`` exits with it: training stopped by SIGTERM or
    SIGUSR1 after saving a checkpoint prints ``stopped: <message>`` and exits with 75, for
    schedulers to requeue (see ``resnet_det.engine.trainer``). Set ``RESNET_DET_TRACEBACK=1`` to
    see the full traceback of such an error.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        import os

        try:
            return main(*args, **kwargs)
        except USER_ERRORS as e:
            if os.environ.get("RESNET_DET_TRACEBACK"):
                raise
            status = getattr(e, "exit_status", 2)
            print(f"{'error' if status == 2 else 'stopped'}: {user_message(e)}", file=sys.stderr)
            sys.exit(status)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper


def log_to_stderr(timestamps: bool = True) -> None:
    """INFO and above of every logger to stderr, as the tools show progress (training lines carry
    the time; evaluation's few lines do not need it)."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {fmt}" if timestamps else fmt)


def add_trust_arg(parser) -> None:
    """``--trust-checkpoint``: the opt-in, for this call, to files that only load by running code."""
    from backbones.serialization import TRUST_FLAG

    parser.add_argument(
        TRUST_FLAG,
        action="store_true",
        help="load checkpoints and weights files even if unpickling them can run code (old or foreign "
        "formats); only for files you trust, and a warning names each one",
    )


def add_training_args(parser) -> None:
    """The flags that tools/train_det.py and tools/train_cls.py share."""
    parser.add_argument("--config", metavar="FILE", help="YAML recipe (see configs/); flags and overrides apply on top")
    parser.add_argument("--output", metavar="DIR", help="run folder: checkpoints, config.yaml, metrics.jsonl, tb/")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output from its last checkpoint (starts afresh, from --weights, if it has none; "
        "refused if none of them loads)",
    )
    parser.add_argument(
        "--force-unlock",
        action="store_true",
        help="take over the --output folder's lock left by a process on another host that you know is gone",
    )
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument(
        "--amp", action="store_true", help="mixed precision (bf16 autocast; fp16 + grad scaling on older GPUs)"
    )
    parser.add_argument("--max-iter", type=int, metavar="N", help="stop after N iterations")
    parser.add_argument(
        "--batch-size", type=int, metavar="N", help="images per iteration over all processes; the lr scales linearly"
    )
    parser.add_argument(
        "--lr", type=float, help="learning rate for the batch size in use (disables the linear scaling)"
    )
    parser.add_argument(
        "--weights",
        help="starting weights: imagenet | a .pth state dict | an MSRA .pkl | a train_cls.py checkpoint | none; "
        "train_det.py also takes a torchvision detector's: torchvision:fasterrcnn_resnet50_fpn_coco or its .pth",
    )
    parser.add_argument(
        "--data-root", metavar="DIR", help="datasets folder (default: $RESNET_DET_DATASETS or ./datasets)"
    )
    parser.add_argument("--seed", type=int, help="random seed (default: the config's)")
    add_trust_arg(parser)
    parser.add_argument(
        "opts", nargs="*", metavar="KEY=VALUE", help="overrides of any config key, e.g. train.checkpoint_period=500"
    )


def training_overrides(args, weights_key: str, data_root_key: str) -> list:
    """Turn the shared flags into ``key=value`` overrides (applied before the positional ones)."""
    from resnet_det.errors import ConfigError

    out = []
    if args.output:
        out.append(f"train.output_dir={args.output}")
    if args.device:
        out.append(f"train.device={args.device}")
    if args.amp:
        out.append("train.amp=true")
    if args.max_iter is not None:
        if args.max_iter <= 0:
            raise ConfigError(f"--max-iter {args.max_iter}: give a positive number of iterations")
        out.append(f"solver.max_iter={args.max_iter}")
    if args.batch_size is not None:
        if args.batch_size <= 0:
            raise ConfigError(f"--batch-size {args.batch_size}: give a positive number of images")
        out.append(f"solver.batch_size={args.batch_size}")
    if args.lr is not None:
        # An explicit lr is the lr to use: make the scaling rule an identity (its batch is the
        # effective one, batch_size * accumulate_steps).
        from omegaconf import OmegaConf

        def product(a: int, b: int) -> int:
            return int(a) * int(b)

        OmegaConf.register_resolver("resnet_det_product", product, replace=True)
        out.append(f"solver.base_lr={args.lr}")
        out.append("solver.reference_batch_size=${resnet_det_product:${solver.batch_size},${solver.accumulate_steps}}")
    if args.weights:
        # "none": from scratch (random initialisation), whatever weights the recipe names.
        out.append(f"{weights_key}=null" if args.weights.lower() == "none" else f"{weights_key}={args.weights}")
    if args.data_root:
        out.append(f"{data_root_key}={args.data_root}")
    if args.seed is not None:
        out.append(f"train.seed={args.seed}")
    return out
