"""An evaluation report as a terminal table, report.json, report.md and a PR plot; and --compare.

report.json keeps every number as a fraction in 0..1, pycocotools' convention, so it matches the
summary pycocotools prints; the tables show the same numbers with 3 decimals, and "-" where there
is none (a class without ground truth, or pycocotools' -1 for an area range without any).
"""

import html
import json
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from resnet_det.errors import EvaluationError
from resnet_det.evaluation.coco import read_json
from resnet_det.evaluation.plots import pr_curves_png
from resnet_det.utils.file_io import atomic_write_bytes, atomic_write_text

METRIC_TITLES = {
    "coco": "COCO box AP (pycocotools)",
    "voc07": "PASCAL VOC2007 11-point AP at IoU 0.5",
    "voc10": "PASCAL VOC2010+ area AP at IoU 0.5",
}
REPORT_FILES = ("detections.json", "pr_curves.png", "report.md", "report.json")


# Characters that Markdown reads as markup (emphasis, code, links, table cells, strikethrough).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _plain(text) -> str:
    """One line of text, control characters (terminal escapes, newlines) shown as spaces."""
    return _CONTROL.sub(" ", str(text))


def _md(text) -> str:
    """Text from the data (class, dataset and file names) as Markdown shows it literally:
    markup characters backslash-escaped, then ``&``, ``<`` and ``>`` as HTML entities, so
    ``<script>`` is text and a ``|`` cannot split a table cell."""
    return html.escape(_MARKDOWN_SPECIAL.sub(r"\\\1", _plain(text)), quote=False)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if value < 0 else f"{value:.3f}"
    return str(value)


def _signed(a: Optional[float], b: Optional[float]) -> str:
    if a is None or b is None or a < 0 or b < 0:
        return "-"
    return f"{b - a:+.3f}"


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def _summary_groups(summary: Mapping[str, Optional[float]]) -> List[Tuple[str, List[str]]]:
    """The headline numbers in rows with their captions: VOC's mAP, then precision, then recall."""
    coco_caption = "COCO-style (pycocotools; difficult objects ignored):" if "mAP" in summary else ""
    groups = [
        ("", [k for k in summary if k == "mAP"]),
        (coco_caption, [k for k in summary if k.startswith("AP")]),
        ("", [k for k in summary if k.startswith("AR")]),
    ]
    return [(caption, keys) for caption, keys in groups if keys]


def _class_table(report: Mapping, escape=_plain):
    columns = [c for c in ("AP", "AP50") if any(c in row for row in report["per_class"])]
    header = ["class", *columns, "num_gt"]
    rows = [[escape(row["name"]), *(_fmt(row.get(c)) for c in columns), row["num_gt"]] for row in report["per_class"]]
    if "mAP" in report["summary"]:
        rows.append(["mean", _fmt(report["summary"]["mAP"]), *([""] * (len(columns) - 1)), ""])
    return header, rows


def _title(report: Mapping) -> str:
    return (
        f"{_plain(METRIC_TITLES.get(report['metric'], report['metric']))} on {_plain(report['dataset'])}: "
        f"{report['num_images']} images, {report['num_detections']} detections"
    )


def format_table(report: Mapping) -> str:
    """The report for the terminal: the headline numbers, then one row per class."""
    lines = [_title(report)]
    for caption, keys in _summary_groups(report["summary"]):
        lines += [f"  {caption}"] if caption else []
        lines += ["  " + line for line in _text_table(keys, [[_fmt(report["summary"][k]) for k in keys]])]
    lines += ["", *_text_table(*_class_table(report))]
    return "\n".join(lines) + "\n"


def format_markdown(report: Mapping) -> str:
    """report.md: what was evaluated, the numbers, the per-class table, pycocotools' own summary.

    Every name from the data or the command line (dataset, checkpoint, classes) is escaped (``_md``).
    """
    lines = [
        f"# Evaluation on {_md(report['dataset'])}",
        "",
        f"- metric: {METRIC_TITLES.get(report['metric'], report['metric'])} (`{report['metric']}`)",
        f"- checkpoint: {_md(report.get('checkpoint') or '-')}",
        f"- config hash: {_md(report.get('config_hash') or '-')}",
        f"- date: {report['date']}",
        f"- images: {report['num_images']}, detections: {report['num_detections']} (`detections.json`)",
        "",
        "## Summary",
        "",
    ]
    for caption, keys in _summary_groups(report["summary"]):
        lines += [caption, ""] if caption else []
        lines += [*_markdown_table(keys, [[_fmt(report["summary"][k]) for k in keys]]), ""]
    lines += ["## Per class", "", *_markdown_table(*_class_table(report, escape=_md)), ""]
    if report.get("cocoeval_summary"):
        lines += ["## pycocotools summary", "", "```", *report["cocoeval_summary"], "```", ""]
    lines += ["![precision-recall curves](pr_curves.png)", ""]
    return "\n".join(lines)


def write_report(report: Mapping, detections: Sequence[Mapping], output_dir: Path) -> Dict[str, Path]:
    """Write detections.json, pr_curves.png, report.md and report.json (last) into ``output_dir``.

    Each file is written atomically. The PR curves are drawn, not stored in report.json: the
    detections file recomputes them.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: output_dir / name for name in REPORT_FILES}
    atomic_write_text(paths["detections.json"], json.dumps(list(detections)))
    curves = report["pr_curves"]
    ap = {row["name"]: row.get("AP50", row["AP"]) for row in report["per_class"]}
    title = f"{report['dataset']}\nprecision-recall at IoU 0.5 ({report['metric']})"
    atomic_write_bytes(paths["pr_curves.png"], pr_curves_png(curves["recall"], curves["precision"], ap, title))
    atomic_write_text(paths["report.md"], format_markdown(report))
    stored = {k: v for k, v in report.items() if k != "pr_curves"}
    atomic_write_text(paths["report.json"], json.dumps(stored, indent=2) + "\n")
    return paths


def load_report(path: Path) -> Dict:
    """A report.json written by ``write_report``."""
    report = read_json(path, "report")
    if not isinstance(report, dict) or not {"metric", "dataset", "summary", "per_class"} <= report.keys():
        raise EvaluationError(
            f"{path}: not a report.json of tools/eval.py (it needs metric, dataset, summary and per_class)"
        )
    return report


def compare_reports(path_a: Path, path_b: Path) -> str:
    """The differences b - a between two report.json files, per headline number and per class AP."""
    a, b = load_report(path_a), load_report(path_b)
    lines = [
        _plain(
            f"{label} = {path}: {r['metric']} on {r['dataset']}, "
            f"checkpoint {r.get('checkpoint') or '-'}, {r.get('date') or '-'}"
        )
        for label, path, r in (("a", path_a, a), ("b", path_b, b))
    ]
    for key in ("metric", "dataset"):
        if a[key] != b[key]:
            note = f"note: the {key}s differ ({a[key]} vs {b[key]}), so the numbers measure different things"
            lines.append(_plain(note))
    ap_a = {_plain(row["name"]): row["AP"] for row in a["per_class"]}
    ap_b = {_plain(row["name"]): row["AP"] for row in b["per_class"]}
    for title, x, y in (("number", a["summary"], b["summary"]), ("class AP", ap_a, ap_b)):
        rows = [[k, _fmt(x.get(k)), _fmt(y.get(k)), _signed(x.get(k), y.get(k))] for k in dict.fromkeys([*x, *y])]
        lines += ["", *_text_table([title, "a", "b", "b - a"], rows)]
    return "\n".join(lines) + "\n"
