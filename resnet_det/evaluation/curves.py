"""Training and test error against iterations, read from a run's ``metrics.jsonl`` (the paper's Fig. 4 and 6).

A classification run's ``metrics.jsonl`` (``engine.events``) gives the training error of each log
period (drawn thin) and the validation top-1 error of each evaluation (drawn bold), in one colour
per run, labelled with the folder's name.
"""

import io
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from resnet_det.errors import EvaluationError
from resnet_det.utils.file_io import atomic_write_bytes, json_lines

__all__ = ["METRICS_FILE", "read_curves", "plot_curves"]

METRICS_FILE = "metrics.jsonl"  # one JSON object per logged iteration, written by engine.events
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
    for _, record in json_lines(path.read_text()):
        if "iteration" not in record:
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
    for curve, colour in zip(curves, colours):
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
