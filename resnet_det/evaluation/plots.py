"""The report's plots as PNG bytes: precision-recall curves, precision / recall / F1 against the
score, the confusion matrix and TIDE's error breakdown.

Drawn on a bare matplotlib ``Figure`` with the Agg canvas, not through ``pyplot``: no global
backend or figure state is touched, so this is safe in a training process and on a headless
machine.
"""

import io
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_LINES = 10
MAX_CONFUSION_CLASSES = 25


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
    return _png(fig)


def _png(fig: Figure) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def threshold_curves_png(thresholds: Mapping, title: str) -> bytes:
    """Overall precision, recall and F1 against the score threshold, with the chosen score, the
    best-F1 score and the score for the target precision marked."""
    curves, overall = thresholds["curves"], thresholds["overall"]
    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.add_subplot()
    for key in ("precision", "recall", "f1"):
        axes.plot(curves["score"], curves[key], label=key if key != "f1" else "F1", linewidth=1.8)
    marks = [("chosen", overall["at_score"], ":")]
    marks += [("best F1", overall["best_f1"], "--")] if overall["best_f1"] else []
    if overall["at_precision"]:
        marks.append((f"precision {overall['at_precision']['target']:.2f}", overall["at_precision"], "-."))
    for label, point, style in marks:
        axes.axvline(point["score"], color="gray", linestyle=style, linewidth=1, label=f"{label}: {point['score']:.2f}")
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold", ylabel="value")
    axes.set_title(_plain(title), fontsize="medium")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
    return _png(fig)


def confusion_png(confusion: Mapping, title: str, max_classes: int = MAX_CONFUSION_CLASSES) -> bytes:
    """The confusion matrix, each row as fractions of its objects (counts written in the cells);
    with many classes, only the ``max_classes`` with the most objects and detections."""
    counts = np.asarray(confusion["counts"], dtype=np.int64)
    n = len(confusion["classes"])
    keep = np.argsort(-(counts[:n].sum(1) + counts[:, :n].sum(0)), kind="stable")[:max_classes]
    keep = np.sort(keep[(counts[keep].sum(1) + counts[:, keep].sum(0)) > 0])
    rows, cols = [*keep, n], [*keep, n]
    shown = counts[np.ix_(rows, cols)]
    fractions = shown / np.maximum(shown.sum(1, keepdims=True), 1)
    size = 3 + 0.3 * len(rows)
    fig = Figure(figsize=(size + 1.5, size), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.add_subplot()
    image = axes.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the row")
    if len(rows) <= 30:
        for (i, j), v in np.ndenumerate(shown):
            if v:
                axes.text(
                    j,
                    i,
                    str(v),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if fractions[i, j] > 0.5 else "black",
                )
    axes.set_xticks(
        range(len(cols)), [_plain(confusion["columns"][j]) for j in cols], rotation=60, ha="right", fontsize=8
    )
    axes.set_yticks(range(len(rows)), [_plain(confusion["rows"][i]) for i in rows], fontsize=8)
    axes.set(xlabel="detected as", ylabel="ground truth")
    if len(keep) < n:
        title = f"{title}\n({len(keep)} of {n} classes: those with the most objects and detections)"
    axes.set_title(_plain(title), fontsize="medium")
    return _png(fig)


def tide_png(tide: Mapping, names: Mapping[str, str], title: str) -> bytes:
    """TIDE's dAP per error type and for all false positives / negatives, as bars (AP points)."""
    fig = Figure(figsize=(8, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    main, special = fig.add_subplot(1, 3, (1, 2)), fig.add_subplot(1, 3, 3)
    kinds = list(tide["dAP"])
    values: Dict[str, float] = {k: 100 * tide["dAP"][k] for k in kinds}
    bars = main.barh(
        [names[k] for k in kinds][::-1],
        [values[k] for k in kinds][::-1],
        color=[f"C{i}" for i in range(len(kinds))][::-1],
    )
    main.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    main.set(xlabel="dAP (AP50 points gained by fixing it)")
    main.set_title(_plain(title), fontsize="medium")
    sp = {"all FP": 100 * tide["special_dAP"]["FP"], "all FN": 100 * tide["special_dAP"]["FN"]}
    bars = special.bar(list(sp), list(sp.values()), color=["C7", "C8"])
    special.bar_label(bars, fmt="%.2f", fontsize=8)
    special.set(ylabel="dAP")
    top = max([*values.values(), *sp.values(), 1.0]) * 1.2
    main.set_xlim(0, top)
    special.set_ylim(0, top)
    return _png(fig)
