"""Precision-recall curves as a PNG.

Drawn on a bare matplotlib ``Figure`` with the Agg canvas, not through ``pyplot``: no global
backend or figure state is touched, so this is safe in a training process and on a headless
machine.
"""

import io
from typing import List, Mapping, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_LINES = 10


def _plain(text: str) -> str:
    """``text`` as matplotlib shows it literally: ``$`` would start mathtext (and a malformed
    formula fails the whole plot), a leading ``_`` would hide a legend entry."""
    text = str(text).replace("$", r"\$")
    return f" {text}" if text.startswith("_") else text


def classes_to_plot(ap: Mapping[str, Optional[float]], max_lines: int = MAX_LINES) -> List[str]:
    """The classes by descending AP; only the best and the worst ``max_lines // 2`` when there
    are more than ``max_lines``, so that the plot stays readable."""
    names = sorted(ap, key=lambda n: -(ap[n] or 0.0))
    if len(names) <= max_lines:
        return names
    return names[: max_lines // 2] + names[-(max_lines // 2) :]


def pr_curves_png(
    recall: Sequence[float],
    precision: Mapping[str, Sequence[float]],
    ap: Mapping[str, Optional[float]],
    title: str,
    max_lines: int = MAX_LINES,
) -> bytes:
    """One precision-recall line per class of ``precision``, labelled with its AP (see
    ``classes_to_plot`` for the classes drawn when there are many)."""
    names = classes_to_plot({n: ap.get(n) for n in precision}, max_lines)
    if len(names) < len(precision):
        title = f"{title}\n(the top and bottom {max_lines // 2} of {len(precision)} classes by AP)"
    fig = Figure(figsize=(9, 5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.add_subplot()
    for name in names:
        axes.plot(recall, precision[name], label=_plain(f"{name} ({ap.get(name) or 0.0:.3f})"), linewidth=1.5)
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    axes.set_title(_plain(title), fontsize="medium")
    axes.grid(True, alpha=0.3)
    if names:
        axes.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small", title="class (AP)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
