"""report.html and compare.html: self-contained, escaped, sortable, the gallery drawn; and what
headless Chromium shows of them (where chromium is installed)."""

import base64
import importlib.util
import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_eval_report import detections_of, voc_like

from resnet_det.evaluation.evaluator import evaluate_detections
from resnet_det.evaluation.report import write_compare_html, write_report

REPO = Path(__file__).resolve().parents[1]
PNG, JPEG = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


def toy_run(tmp_path, name, drop_image=2, hostile=False):
    """A report.html of the toy VOC set with real image files; ``drop_image`` loses its detections."""
    records, metadata = voc_like()
    for rec in records:
        rec["file_name"] = str(tmp_path / f"{rec['image_id']}.png")
        cv2.imwrite(rec["file_name"], np.full((120, 120, 3), 90, dtype=np.uint8))
    if hostile:
        metadata = {**metadata, "class_names": ["<script>alert(1)</script>", "bicycle", "bird"]}
    dets = [d for d in detections_of(records) if d["image_id"] != drop_image]
    dets.append({"image_id": 1, "category_id": 2, "bbox": [70.0, 70.0, 30.0, 30.0], "score": 0.8})  # a false positive
    report = evaluate_detections(dets, records, metadata, explain=True)
    write_report(report, dets, tmp_path / name)
    return report, (tmp_path / name / "report.html").read_text()


def inlined(page):
    return re.findall(r'src="data:image/(png|jpeg);base64,([^"]+)"', page)


def test_the_report_page_is_self_contained_and_has_every_part(tmp_path):
    report, page = toy_run(tmp_path, "a")
    assert "http://" not in page and "https://" not in page and "<link" not in page  # opens offline
    images = inlined(page)
    pngs = [base64.b64decode(b) for kind, b in images if kind == "png"]
    jpegs = [base64.b64decode(b) for kind, b in images if kind == "jpeg"]
    assert len(pngs) == 4 and all(p.startswith(PNG) for p in pngs)  # PR, thresholds, confusion, TIDE
    # the gallery: the images with errors, most first (image 1: a false positive; 2: a missed object)
    assert [r["image_id"] for r in report["images"]] == [1, 2] and len(jpegs) == 2 and jpegs[0].startswith(JPEG)
    assert "image 1: false positives 1, missed 0, found 2" in page
    assert page.count('class="sortable"') == 1 and "th.addEventListener('click'" in page
    for text in ("VOC2007 11-point mAP", "VOC2010+ area mAP", "COCO AP (IoU .5:.95)", "Where the AP goes (TIDE)"):
        assert text in page
    assert f"{report['voc']['voc10']['mAP']:.3f}" in page and f"{report['summary']['AP']:.3f}" in page


def test_the_gallery_draws_outcomes_in_their_colours(tmp_path):
    from resnet_det.evaluation.gallery import OUTCOME_COLORS

    report, page = toy_run(tmp_path, "a")
    jpeg = base64.b64decode([b for kind, b in inlined(page) if kind == "jpeg"][1])  # image 2: its missed object
    drawn = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    x0, y0, y1 = 5, 5, 40  # the left edge of the aeroplane nobody found
    edge = drawn[y0 + 10 : y1 - 10, x0].astype(int)
    assert OUTCOME_COLORS["missed"][2] > 200
    assert ((edge[:, 2] > edge[:, 0] + 50) & (edge[:, 2] > edge[:, 1] + 40)).all()  # blue, if JPEG-blurred on gray


def test_names_from_the_data_are_escaped(tmp_path):
    _, page = toy_run(tmp_path, "a", hostile=True)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_compare_colours_what_got_better_and_worse(tmp_path):
    a, _ = toy_run(tmp_path, "a", drop_image=2)
    b, _ = toy_run(tmp_path, "b", drop_image=None)  # b finds the aeroplane a missed
    page = write_compare_html(
        tmp_path / "a" / "report.json", tmp_path / "b" / "report.json", tmp_path / "cmp"
    ).read_text()
    delta = b["summary"]["AR100"] - a["summary"]["AR100"]
    assert delta > 0 and f'<td class="up" data-v="{delta}">{delta:+.3f}</td>' in page
    missed = b["tide"]["dAP"]["miss"] - a["tide"]["dAP"]["miss"]
    assert missed < 0 and f'<td class="up" data-v="{missed}">{missed:+.3f}</td>' in page  # a lower dAP is better
    assert len(inlined(page)) == 8  # both runs' four plots, side by side


def test_the_tool_writes_both_pages(tmp_path, capsys):
    from test_eval_coco import make_case

    spec = importlib.util.spec_from_file_location("eval_tool", REPO / "tools" / "eval.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    gt, dets = make_case(0)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "d.json").write_text(json.dumps(dets))
    common = ["--results", str(tmp_path / "d.json"), "--gt", str(tmp_path / "gt.json")]
    tool.main([*common, "--output", str(tmp_path / "a"), "--score-thresh", "0.3", "--target-precision", "0.8"])
    printed = capsys.readouterr().out
    assert "VOC07 mAP" in printed and "at score 0.30: precision" in printed and "TIDE dAP" in printed
    tool.main([*common, "--output", str(tmp_path / "b"), "--backend", "faster-coco-eval", "--no-analysis"])
    a, b = (json.loads((tmp_path / r / "report.json").read_text()) for r in "ab")
    assert a["thresholds"]["score_thresh"] == 0.3 and a["confusion"]["score_thresh"] == 0.3
    assert a["thresholds"]["target_precision"] == 0.8 and "errors" not in a["tide"]
    assert b["backend"] == "faster-coco-eval" and "tide" not in b and not (tmp_path / "b" / "report.html").exists()
    assert b["summary"] == pytest.approx(a["summary"], abs=1e-6)
    tool.main(
        [
            "--compare",
            str(tmp_path / "a" / "report.json"),
            str(tmp_path / "b" / "report.json"),
            "--output",
            str(tmp_path / "c"),
        ]
    )
    assert "compare.html" in capsys.readouterr().out and (tmp_path / "c" / "compare.html").is_file()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_chromium_renders_the_highlights_and_plots(tmp_path):
    spec = importlib.util.spec_from_file_location("screenshot_tool", REPO / "tools" / "screenshot_report.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    toy_run(tmp_path, "a", drop_image=2)
    toy_run(tmp_path, "b", drop_image=None)
    page = write_compare_html(tmp_path / "a" / "report.json", tmp_path / "b" / "report.json", tmp_path / "cmp")
    shot = cv2.cvtColor(cv2.imread(str(tool.screenshot(page, tmp_path / "shot.png", (1200, 900)))), cv2.COLOR_BGR2RGB)
    pixels = shot.reshape(-1, 3)
    up = (0xDF, 0xF3, 0xE3)  # the .up cells (b better than a), as the browser paints them
    assert (np.abs(pixels.astype(int) - up).max(axis=1) <= 2).sum() > 500
    assert len(np.unique(pixels // 16, axis=0)) > 50  # text and the plots, not a blank page


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--results", "d.json", "--gt", "g.json", "--score-thresh", "1.5"], "--score-thresh must lie in 0..1"),
        (["--results", "d.json", "--gt", "g.json", "--target-precision", "0"], "--target-precision in (0, 1]"),
        (["--results", "d.json", "--dataset", "voc_2007_test", "--images", "x/"], "--images goes with --gt"),
        (["--results", "d.json", "--gt", "g.json", "--backend", "fast"], "invalid choice: 'fast'"),
    ],
)
def test_the_new_flags_are_checked(capsys, argv, expected):
    spec = importlib.util.spec_from_file_location("eval_tool", REPO / "tools" / "eval.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with pytest.raises(SystemExit):
        tool.parse_args(argv)
    assert expected in capsys.readouterr().err
