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
from resnet_det.evaluation.gallery import gallery
from resnet_det.evaluation.html_report import compare_html, format_html
from resnet_det.evaluation.plots import confusion_png, pr_curves_png, threshold_curves_png, tide_png
from resnet_det.evaluation.tide import ERROR_NAMES
from resnet_det.utils.file_io import atomic_write_bytes, atomic_write_text

METRIC_TITLES = {
    "coco": "COCO box AP (pycocotools)",
    "voc07": "PASCAL VOC2007 11-point AP at IoU 0.5",
    "voc10": "PASCAL VOC2010+ area AP at IoU 0.5",
}
REPORT_FILES = ("detections.json", "pr_curves.png", "report.md", "report.json")
# Written too when the report holds the analysis (evaluate_detections(..., explain=True)).
ANALYSIS_FILES = ("thresholds.png", "confusion.png", "tide.png", "report.html")
PLOT_FILES = ("pr_curves.png", "thresholds.png", "confusion.png", "tide.png")


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
    if "thresholds" in report:
        lines += ["", *_analysis_lines(report)]
    return "\n".join(lines) + "\n"


def _analysis_lines(report: Mapping) -> List[str]:
    """The analysis in three lines: both VOC metrics, the operating points, TIDE's dAP."""
    voc, tide, t = report["voc"], report["tide"], report["thresholds"]
    at, best, target = t["overall"]["at_score"], t["overall"]["best_f1"], t["overall"]["at_precision"]
    points = (
        f"at score {at['score']:.2f}: precision {at['precision']:.3f}, recall {at['recall']:.3f}, F1 {at['f1']:.3f}"
    )
    points += f"; best F1 {best['f1']:.3f} at score {best['score']:.2f}" if best else ""
    points += (
        f"; precision {t['target_precision']:.2f} from score {target['score']:.2f}"
        if target
        else f"; precision {t['target_precision']:.2f} not reached"
    )
    daps = " ".join(f"{k} {100 * v:.2f}" for k, v in tide["dAP"].items())
    special = f"FP {100 * tide['special_dAP']['FP']:.2f} FN {100 * tide['special_dAP']['FN']:.2f}"
    return [
        f"PASCAL VOC (devkit rules, IoU 0.5): VOC07 mAP {_fmt(voc['voc07']['mAP'])}, VOC10 mAP {_fmt(voc['voc10']['mAP'])}",
        points,
        f"TIDE dAP (AP50 points gained by fixing each error type): {daps} | {special}",
    ]


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
        backend = report.get("backend", "pycocotools")
        lines += [f"## {backend} summary", "", "```", *report["cocoeval_summary"], "```", ""]
    lines += ["![precision-recall curves](pr_curves.png)", ""]
    if "thresholds" in report:
        lines += _analysis_markdown(report)
    return "\n".join(lines)


def _analysis_markdown(report: Mapping) -> List[str]:
    voc, tide, t = report["voc"], report["tide"], report["thresholds"]
    overall = t["overall"]
    at, best, target = overall["at_score"], overall["best_f1"], overall["at_precision"]
    lines = [
        "## PASCAL VOC AP (devkit rules, IoU 0.5)",
        "",
        f"- VOC2007 11-point mAP: {_fmt(voc['voc07']['mAP'])}",
        f"- VOC2010+ area mAP: {_fmt(voc['voc10']['mAP'])}",
        "",
        f"## Operating points (IoU {t['iou_thresh']}, all classes)",
        "",
        f"- at score {at['score']:.2f}: precision {at['precision']:.3f}, recall {at['recall']:.3f}, "
        f"F1 {at['f1']:.3f} ({at['tp']} found, {at['fp']} false positives, {at['fn']} missed)",
        f"- best F1: {best['f1']:.3f} at score {best['score']:.2f}" if best else "- best F1: - (nothing found)",
        f"- precision {t['target_precision']:.2f}: from score {target['score']:.2f} (recall {target['recall']:.3f})"
        if target
        else f"- precision {t['target_precision']:.2f}: not reached at any score",
        "",
        f"## Errors (TIDE, AP50 {tide['AP50']:.3f})",
        "",
        *_markdown_table(
            ["error", "dAP", "count"],
            [[ERROR_NAMES[k], f"{100 * v:.2f}", tide["counts"][k]] for k, v in tide["dAP"].items()]
            + [
                ["all false positives", f"{100 * tide['special_dAP']['FP']:.2f}", tide["num_fp"]],
                ["all false negatives", f"{100 * tide['special_dAP']['FN']:.2f}", tide["num_fn"]],
            ],
        ),  # fmt: skip
        "",
        "![precision, recall and F1 against the score](thresholds.png)",
        "![confusion matrix](confusion.png)",
        "![TIDE errors](tide.png)",
        "",
        "The full report, with sortable per-class tables and the images with the most errors: `report.html`.",
        "",
    ]
    return lines


def _plots(report: Mapping) -> Dict[str, bytes]:
    """The report's PNGs by file name: the PR curves, and those of the analysis where it has one."""
    curves = report["pr_curves"]
    ap = {row["name"]: row.get("AP50", row["AP"]) for row in report["per_class"]}
    title = f"{report['dataset']}\nprecision-recall at IoU 0.5 ({report['metric']})"
    plots = {"pr_curves.png": pr_curves_png(curves["recall"], curves["precision"], ap, title)}
    if "thresholds" in report:
        t = report["thresholds"]
        plots["thresholds.png"] = threshold_curves_png(t, f"all classes at IoU {t['iou_thresh']}")
        c = report["confusion"]
        plots["confusion.png"] = confusion_png(
            c, f"confusion at IoU {c['iou_thresh']}, score >= {c['score_thresh']:.2f}"
        )
        plots["tide.png"] = tide_png(report["tide"], ERROR_NAMES, f"TIDE errors, AP50 {report['tide']['AP50']:.3f}")
    return plots


def _stored(report: Mapping) -> Dict:
    """report.json's content: all but the PR curves (detections.json recomputes them) and TIDE's
    error list (its counts stay)."""
    stored = {k: v for k, v in report.items() if k != "pr_curves"}
    if "tide" in stored:
        stored["tide"] = {k: v for k, v in stored["tide"].items() if k != "errors"}
    return stored


def write_report(
    report: Mapping, detections: Sequence[Mapping], output_dir: Path, image_root: Optional[Path] = None
) -> Dict[str, Path]:
    """Write detections.json, the PNGs, report.md, report.html (with the analysis) and
    report.json (last) into ``output_dir``.

    Each file is written atomically. The PR curves are drawn, not stored in report.json: the
    detections file recomputes them. ``image_root`` is where relative image file names of the
    gallery are found (a COCO file's images folder).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = REPORT_FILES + (ANALYSIS_FILES if "thresholds" in report else ())
    paths = {name: output_dir / name for name in names}
    atomic_write_text(paths["detections.json"], json.dumps(list(detections)))
    plots = _plots(report)
    for name, png in plots.items():
        atomic_write_bytes(paths[name], png)
    atomic_write_text(paths["report.md"], format_markdown(report))
    if "report.html" in paths:
        class_names = {row["category_id"]: row["name"] for row in report["per_class"]}
        drawn = gallery(report.get("images", []), class_names, image_root)
        atomic_write_text(paths["report.html"], format_html(report, plots, drawn))
    atomic_write_text(paths["report.json"], json.dumps(_stored(report), indent=2) + "\n")
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


def write_compare_html(path_a: Path, path_b: Path, output: Path) -> Path:
    """compare.html in ``output``: the two report.json files side by side, with the PNGs found
    beside each."""
    a, b = load_report(path_a), load_report(path_b)
    plots = [
        {name: (Path(p).parent / name).read_bytes() for name in PLOT_FILES if (Path(p).parent / name).is_file()}
        for p in (path_a, path_b)
    ]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "compare.html", compare_html(a, b, str(path_a), str(path_b), plots[0], plots[1]))
    return output / "compare.html"
