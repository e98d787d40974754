"""Plot training and test error against iterations for classification runs (the paper's Fig. 4 and 6).

Examples:
  python tools/plot_curves.py output/cifar_plain56 output/cifar_r56          # the degradation problem
  python tools/plot_curves.py output/cifar_plain20 output/cifar_plain56 --output plain.png

Each run folder is one written by tools/train_cls.py; its metrics.jsonl gives the training error of
each log period (thin line) and the validation top-1 error of each evaluation (bold line), in one
colour per run, labelled with the folder's name.
"""

import argparse
import io
import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from resnet_det.cli import main_guard
from resnet_det.engine.checkpoint import atomic_write_bytes
from resnet_det.engine.events import METRICS_FILE
from resnet_det.errors import ConfigError, EvaluationError

TRAIN_KEY = "top1_err"  # training error of the log window (train_classification's step_fn)
TEST_KEY = "val/top1_err"

Curve = List[Tuple[int, float]]


def read_curves(run: Path) -> Dict[str, Curve]:
    """``{"train": [(iteration, error %)], "test": [...]}`` from ``run/metrics.jsonl``.

    A torn last line (a run killed while writing) is left out, as the trainer itself does.
    """
    path = run / METRICS_FILE
    if not path.is_file():
        raise EvaluationError(f"{run} has no {METRICS_FILE}: give the --output folder of a tools/train_cls.py run")
    curves: Dict[str, Curve] = {"train": [], "test": []}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or "iteration" not in record:
            continue
        for name, key in (("train", TRAIN_KEY), ("test", TEST_KEY)):
            if key in record:
                curves[name].append((int(record["iteration"]), float(record[key])))
    if not curves["train"] and not curves["test"]:
        raise EvaluationError(
            f"{path} has no '{TRAIN_KEY}' or '{TEST_KEY}' values: plot runs of tools/train_cls.py, not detection runs"
        )
    return curves


def plot_curves(runs: Sequence[Path], output: Path, names: Sequence[str] = ()) -> None:
    """Draw every run's curves into one PNG at ``output`` (written atomically)."""
    # The object API with the Agg canvas: no pyplot, no global backend, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    names = list(names) or [run.resolve().name for run in runs]
    curves = [read_curves(run) for run in runs]
    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for name, curve, colour in zip(names, curves, colours):
        if curve["train"]:
            ax.plot(*zip(*curve["train"]), color=colour, linewidth=0.8, alpha=0.8)
        if curve["test"]:
            ax.plot(*zip(*curve["test"]), color=colour, linewidth=2.5)
    runs_legend = [Line2D([], [], color=c, linewidth=2.5, label=n) for n, c in zip(names, colours)]
    styles_legend = [
        Line2D([], [], color="gray", linewidth=0.8, label="training error"),
        Line2D([], [], color="gray", linewidth=2.5, label="test error"),
    ]
    ax.add_artist(ax.legend(handles=runs_legend, loc="upper right", fontsize=8))
    ax.legend(handles=styles_legend, loc="upper center", fontsize=8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("error (%)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(output, buffer.getvalue())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
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
