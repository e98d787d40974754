"""report.html: one self-contained page (plots and gallery inlined as base64, no server, no
network) with the summary, sortable per-class tables, the plots and the gallery; and the
``--compare`` page, two reports side by side with their differences coloured.

Every text from the data (dataset, checkpoint, class names) is HTML-escaped.
"""

import base64
import html
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from resnet_det.evaluation.tide import ERROR_NAMES, ERROR_TYPES

STAT_HELP = {
    "AP": "COCO AP: precision averaged over recall 0..1 and IoU 0.50:0.05:0.95, then over classes",
    "AP50": "COCO AP at IoU 0.5 only",
    "AP75": "COCO AP at IoU 0.75 only (stricter boxes)",
    "APs": "AP of small objects (area < 32^2 px)",
    "APm": "AP of medium objects (32^2..96^2 px)",
    "APl": "AP of large objects (> 96^2 px)",
    "AR1": "recall with 1 detection per image, averaged over IoU 0.5:0.95",
    "AR10": "recall with 10 detections per image",
    "AR100": "recall with 100 detections per image",
    "ARs": "AR100 of small objects",
    "ARm": "AR100 of medium objects",
    "ARl": "AR100 of large objects",
    "mAP": "the report's own PASCAL VOC mean AP at IoU 0.5",
}

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330;max-width:1500px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dde;padding-bottom:4px}
.meta{color:#556;font-size:13px;margin-bottom:10px} .meta code{background:#f1f3f7;padding:1px 4px;border-radius:3px}
table{border-collapse:collapse;font-size:13px;margin:6px 0} th,td{border:1px solid #d9dde6;padding:3px 8px;text-align:right}
th{background:#f1f3f7;position:sticky;top:0} td:first-child,th:first-child{text-align:left}
table.sortable th{cursor:pointer} table.sortable th:after{content:" \\2195";color:#99a}
.cards{display:flex;flex-wrap:wrap;gap:12px} .card{border:1px solid #d9dde6;border-radius:6px;padding:10px 14px;min-width:150px}
.card .v{font-size:24px;font-weight:600} .card .k{font-size:12px;color:#556}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:16px;align-items:start} .plots img{width:100%;border:1px solid #e3e6ee}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.gallery figure{margin:0;border:1px solid #d9dde6;border-radius:6px;padding:6px} .gallery img{width:100%}
figcaption{font-size:12px;color:#334} .up{background:#dff3e3} .down{background:#fbe1e1}
.legend span{display:inline-block;padding:0 6px;margin-right:8px;border-radius:3px;color:#fff;font-size:12px}
.note{font-size:12px;color:#556;max-width:1000px} .wide{overflow-x:auto;max-width:100%} .side{display:grid;grid-template-columns:1fr 1fr;gap:16px}
"""

_SORT_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
    var body=t.tBodies[0], rows=Array.from(body.rows), asc=th.dataset.asc!=='1';
    t.querySelectorAll('th').forEach(function(o){delete o.dataset.asc}); if(asc) th.dataset.asc='1';
    function key(r){var s=r.cells[i].dataset.v!==undefined?r.cells[i].dataset.v:r.cells[i].textContent;
      var n=parseFloat(s); return isNaN(n)?s.toLowerCase():n}
    rows.sort(function(a,b){var x=key(a),y=key(b);
      if(typeof x!==typeof y) return typeof x==='number'?-1:1; return (x<y?-1:x>y?1:0)*(asc?1:-1)});
    rows.forEach(function(r){body.appendChild(r)});
  })})
});
"""


def _e(text) -> str:
    return html.escape(str(text))


def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and v < 0):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else _e(v)


def _cell(v, digits: int = 3, css: str = "") -> str:
    sort_key = "" if not isinstance(v, (int, float)) or v is None else f' data-v="{v}"'
    cls = f' class="{css}"' if css else ""
    return f"<td{cls}{sort_key}>{_num(v, digits)}</td>"


COLUMN_HELP = {
    **{k: f"TIDE: {v} errors of this class (false positives by type; missed objects)" for k, v in ERROR_NAMES.items()},
    "num_gt": "objects of this class (crowd / difficult ones apart)",
    "COCO AP": STAT_HELP["AP"],
    "COCO AP50": STAT_HELP["AP50"],
    "VOC07 AP": "PASCAL VOC2007 11-point AP at IoU 0.5",
    "VOC10 AP": "PASCAL VOC2010+ area AP at IoU 0.5",
    "best-F1 score": "the score threshold that maximises this class's F1",
}


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], sortable: bool = True, titles=None) -> str:
    titles = titles or COLUMN_HELP
    head = "".join(f'<th title="{_e(titles.get(h, ""))}">{_e(h)}</th>' for h in header)
    body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    return (
        f'<table class="{"sortable" if sortable else ""}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def _img(png: bytes, alt: str, mime: str = "image/png") -> str:
    return f'<img alt="{_e(alt)}" src="data:{mime};base64,{base64.b64encode(png).decode()}">'


def _card(value: str, key: str, title: str = "") -> str:
    return f'<div class="card" title="{_e(title)}"><div class="v">{value}</div><div class="k">{_e(key)}</div></div>'


def _meta(report: Mapping) -> str:
    backend = report.get("backend", "pycocotools")
    return (
        f'<div class="meta">metric <code>{_e(report["metric"])}</code> · COCO backend <code>{_e(backend)}</code> · '
        f"{report['num_images']} images · {report['num_detections']} detections · "
        f"checkpoint <code>{_e(report.get('checkpoint') or '-')}</code> · config hash "
        f"<code>{_e(report.get('config_hash') or '-')}</code> · {_e(report.get('date') or '-')}</div>"
    )


def _summary(report: Mapping) -> str:
    summary = report["summary"]
    cards = [_card(_num(summary.get("AP")), "COCO AP (IoU .5:.95)", STAT_HELP["AP"])]
    cards.append(_card(_num(summary.get("AP50")), "COCO AP50", STAT_HELP["AP50"]))
    for name, label in (("voc07", "VOC2007 11-point mAP"), ("voc10", "VOC2010+ area mAP")):
        if report.get("voc"):
            cards.append(_card(_num(report["voc"][name]["mAP"]), label, "PASCAL VOC devkit rules at IoU 0.5"))
    thresholds = report.get("thresholds")
    if thresholds:
        at, best = thresholds["overall"]["at_score"], thresholds["overall"]["best_f1"]
        cards.append(
            _card(f"{at['precision']:.3f} / {at['recall']:.3f}", f"precision / recall at score {at['score']:.2f}")
        )
        if best:
            cards.append(_card(f"{best['score']:.2f}", f"best-F1 score (F1 {best['f1']:.3f})"))
        target = thresholds["overall"]["at_precision"]
        cards.append(
            _card(
                f"{target['score']:.2f}" if target else "-",
                f"score for precision {thresholds['target_precision']:.2f}"
                + (f" (recall {target['recall']:.3f})" if target else " (not reached)"),
            )
        )
    stats = [k for k in summary if k in STAT_HELP]
    table = _table(stats, [[_cell(summary[k]) for k in stats]], sortable=False, titles=STAT_HELP)
    return f'<div class="cards">{"".join(cards)}</div><p class="note">COCO-style numbers (hover for what each means):</p>{table}'


def _tide(report: Mapping) -> str:
    tide = report.get("tide")
    if not tide:
        return ""
    header = ["", *(ERROR_NAMES[k] for k in ERROR_TYPES), "all false positives", "all false negatives"]
    rows = [
        ["<td>dAP (AP50 points gained by fixing it)</td>", *(_cell(100 * tide["dAP"][k], 2) for k in ERROR_TYPES),
         _cell(100 * tide["special_dAP"]["FP"], 2), _cell(100 * tide["special_dAP"]["FN"], 2)],
        ["<td>count</td>", *(_cell(tide["counts"][k]) for k in ERROR_TYPES), _cell(tide["num_fp"]), _cell(tide["num_fn"])],
    ]  # fmt: skip
    return (
        f"<h2>Where the AP goes (TIDE)</h2><p class='note'>TIDE's AP50 is {tide['AP50']:.3f}. Each false positive "
        f"at IoU {tide['pos_thresh']} has one type; the dAP of a type is what AP50 would gain if only those errors were "
        "fixed (Bolya et al., ECCV 2020). Types: localisation (right class, IoU between "
        f"{tide['bg_thresh']} and {tide['pos_thresh']}), classification (wrong class, IoU &ge; {tide['pos_thresh']}), "
        "both, duplicate (a second detection of a found object), background (IoU &le; "
        f"{tide['bg_thresh']} with everything), missed (an object no detection found).</p>"
        + _table(header, rows, sortable=False)
    )


def _class_rows(report: Mapping) -> Tuple[List[str], List[List[str]]]:
    voc = report.get("voc") or {}
    thresholds = {row["category_id"]: row for row in (report.get("thresholds") or {}).get("per_class", [])}
    tide_counts = (report.get("tide") or {}).get("per_class", {})
    t = report.get("thresholds")
    header = ["class", "num_gt", "COCO AP", "COCO AP50"]
    header += ["VOC07 AP", "VOC10 AP"] if voc else []
    if t:
        header += [f"P@{t['score_thresh']:.2f}", f"R@{t['score_thresh']:.2f}", f"F1@{t['score_thresh']:.2f}"]
        header += ["best-F1 score", "best F1", f"score for P {t['target_precision']:.2f}"]
    header += list(ERROR_TYPES) if report.get("tide") else []
    rows = []
    for row in report["per_class"]:
        cells = [f"<td>{_e(row['name'])}</td>", _cell(row["num_gt"]), _cell(row.get("AP")), _cell(row.get("AP50"))]
        if voc:
            cells += [_cell(voc["voc07"]["AP"].get(row["name"])), _cell(voc["voc10"]["AP"].get(row["name"]))]
        if t:
            th = thresholds.get(row["category_id"])
            at = th["at_score"] if th else {}
            best, target = (th or {}).get("best_f1") or {}, (th or {}).get("at_precision") or {}
            cells += [_cell(at.get("precision")), _cell(at.get("recall")), _cell(at.get("f1"))]
            cells += [_cell(best.get("score"), 2), _cell(best.get("f1")), _cell(target.get("score"), 2)]
        if report.get("tide"):
            counts = tide_counts.get(row["category_id"], tide_counts.get(str(row["category_id"]), {}))
            cells += [_cell(counts.get(k, 0)) for k in ERROR_TYPES]
        rows.append(cells)
    return header, rows


def _confusion(report: Mapping) -> str:
    c = report.get("confusion")
    if not c:
        return ""
    return (
        f"<p class='note'>Confusion matrix at IoU {c['iou_thresh']} and score &ge; {c['score_thresh']:.2f}: rows are "
        "what is there (<i>background</i>: nothing), columns what was detected (<i>missed</i>: nothing). The counts "
        "are in report.json (<code>confusion.counts</code>).</p>"
    )


def format_html(
    report: Mapping,
    plots: Mapping[str, bytes],
    gallery: Sequence[Tuple[Mapping, bytes]] = (),
    title: Optional[str] = None,
) -> str:
    """The page of one report; ``plots`` are PNGs by caption, ``gallery`` (row, JPEG) pairs."""
    title = title or f"Evaluation on {report['dataset']}"
    parts = [f"<h1>{_e(title)}</h1>", _meta(report), "<h2>Summary</h2>", _summary(report), _tide(report)]
    parts += ["<h2>Plots</h2>", _confusion(report)]
    parts += ['<div class="plots">', *(_img(png, caption) for caption, png in plots.items()), "</div>"]
    if gallery:
        parts += [
            "<h2>Images with the most errors</h2><p class='legend'>"
            '<span style="background:#28aa3c">found</span><span style="background:#dc2828">false positive</span>'
            '<span style="background:#285ae6">missed</span>'
            f" at score &ge; {report['thresholds']['score_thresh']:.2f}</p>",
            '<div class="gallery">',
        ]
        for row, jpeg in gallery:
            caption = f"image {_e(row['image_id'])}: false positives {row['fp']}, missed {row['fn']}, found {row['tp']}"
            parts.append(f"<figure>{_img(jpeg, caption, 'image/jpeg')}<figcaption>{caption}</figcaption></figure>")
        parts.append("</div>")
    parts += ["<h2>Per class</h2><p class='note'>Click a column to sort; hover a heading for its meaning.</p>"]
    parts.append(_table(*_class_rows(report)))
    return _page(title, parts)


def _page(title: str, parts: Sequence[str]) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}<script>{_SORT_SCRIPT}</script></body></html>\n"
    )


def _delta_cell(a, b, lower_is_better: bool = False) -> str:
    """b - a, green where b is better and red where it is worse (by more than the 3rd decimal)."""
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or a < 0 or b < 0:
        return "<td>-</td>"
    d = b - a
    better, worse = (d < -5e-4, d > 5e-4) if lower_is_better else (d > 5e-4, d < -5e-4)
    css = "up" if better else "down" if worse else ""
    shown = f"{d:+.3f}" if css else f"{0.0:+.3f}"  # no "-0.000"
    return f'<td class="{css}" data-v="{d}">{shown}</td>'


def _flat_numbers(report: Mapping) -> Dict[str, Optional[float]]:
    numbers: Dict[str, Optional[float]] = {
        f"COCO {k}" if k in STAT_HELP and k != "mAP" else k: v for k, v in report["summary"].items()
    }
    for name in ("voc07", "voc10"):
        if report.get("voc"):
            numbers[f"{name.upper()} mAP"] = report["voc"][name]["mAP"]
    if report.get("tide"):
        numbers["TIDE AP50"] = report["tide"]["AP50"]
        numbers.update({f"TIDE dAP {ERROR_NAMES[k]}": report["tide"]["dAP"][k] for k in ERROR_TYPES})
    if report.get("thresholds"):
        overall = report["thresholds"]["overall"]
        numbers.update(
            {
                f"{label} at score {overall['at_score']['score']:.2f}": overall["at_score"][k]
                for k, label in (("precision", "precision"), ("recall", "recall"), ("f1", "F1"))
            }
        )
        numbers["best-F1 score"] = (overall["best_f1"] or {}).get("score")
    return numbers


def compare_html(
    a: Mapping, b: Mapping, label_a: str, label_b: str, plots_a: Mapping[str, bytes], plots_b: Mapping[str, bytes]
) -> str:
    """Two reports side by side: every number of both with b - a coloured (green: b higher,
    red: b lower; for a TIDE dAP, lower is better, so the colours swap), the per-class AP, and
    both runs' plots."""
    parts = [f"<h1>{_e(label_a)} vs {_e(label_b)}</h1>"]
    parts += [
        f"<div class='meta'><b>a</b>: {_e(label_a)}</div>",
        _meta(a),
        f"<div class='meta'><b>b</b>: {_e(label_b)}</div>",
        _meta(b),
    ]
    for key in ("metric", "dataset"):
        if a.get(key) != b.get(key):
            parts.append(
                f"<p class='note down'>The {key}s differ ({_e(a.get(key))} vs {_e(b.get(key))}): the numbers measure different things.</p>"
            )
    na, nb = _flat_numbers(a), _flat_numbers(b)
    rows = []
    for key in dict.fromkeys([*na, *nb]):
        x, y = na.get(key), nb.get(key)
        delta = _delta_cell(x, y, lower_is_better=key.startswith("TIDE dAP"))
        rows.append([f"<td>{_e(key)}</td>", _cell(x), _cell(y), delta])
    parts += ["<h2>Numbers</h2>", _table(["number", "a", "b", "b - a"], rows)]
    ap_a = {row["name"]: row for row in a["per_class"]}
    ap_b = {row["name"]: row for row in b["per_class"]}
    rows = []
    for name in dict.fromkeys([*ap_a, *ap_b]):
        ra, rb = ap_a.get(name, {}), ap_b.get(name, {})
        rows.append(
            [f"<td>{_e(name)}</td>", _cell(ra.get("AP")), _cell(rb.get("AP")), _delta_cell(ra.get("AP"), rb.get("AP")),
             _cell(ra.get("AP50")), _cell(rb.get("AP50")), _delta_cell(ra.get("AP50"), rb.get("AP50"))]
        )  # fmt: skip
    parts += ["<h2>Per class</h2><p class='note'>Click a column to sort: by b - a to find what changed most.</p>"]
    parts.append(_table(["class", "AP a", "AP b", "AP b - a", "AP50 a", "AP50 b", "AP50 b - a"], rows))
    if plots_a or plots_b:
        parts.append("<h2>Plots</h2>")
        for caption in dict.fromkeys([*plots_a, *plots_b]):
            cells = [f"<div>{_img(p[caption], caption) if caption in p else '-'}</div>" for p in (plots_a, plots_b)]
            parts.append(f'<div class="side">{"".join(cells)}</div>')
    return _page(f"{label_a} vs {label_b}", parts)
