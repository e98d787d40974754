"""tools/convert_data.py: every format to every other and back gives the same boxes (exactly for
COCO and VOC, within YOLO's stated tolerance of 1e-6 of the image size), classes and flags."""

import importlib.util
import itertools
import os

import numpy as np
import pytest
from data_fixtures import coco_dict, make_coco, make_voc_style, make_yolo

from resnet_det.data.catalog import get_dataset, register_custom

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YOLO_TOLERANCE = 1e-6  # of the image's size, from the 6 decimals of YOLO's fractions


def convert_tool():
    spec = importlib.util.spec_from_file_location("convert_tool", os.path.join(REPO, "tools", "convert_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _options(fmt, folder, split):
    """The convert_data.py input options of a data set of ``fmt`` written (by us or by it) in ``folder``."""
    if fmt == "coco":
        return ["--images", folder / "images", "--annotations", folder / "annotations.json"]
    if fmt == "voc":
        return ["--root", folder, "--split", split, "--classes", folder / "classes.txt"]
    return ["--classes", folder / "data.yaml", "--split", split]


def _entry(options):
    keys = iter(options)
    entry = dict.fromkeys(("images", "annotations", "root", "split", "classes"))
    entry.update({key[2:]: str(value) for key, value in zip(keys, keys)})
    return entry


def _read(fmt, options):
    name = f"{fmt}:{options}"
    register_custom(name, {"format": fmt, **_entry(options)})
    records, meta = get_dataset(name)
    named = {}
    for r in records:
        anns = sorted(
            (meta["class_names"][a["label"] - 1], tuple(a["bbox"]), a["iscrowd"], a["difficult"])
            for a in r["annotations"]
        )
        named[os.path.basename(r["file_name"])] = (r["width"], r["height"], anns)
    return named, meta["class_names"]


def _sources(tmp_path):
    """One small data set per format, with fractional boxes (COCO), difficult (VOC) and crowd (COCO)."""
    coco = coco_dict()
    coco["annotations"][0]["bbox"] = [10.25, 5.5, 20.125, 15.75]
    make_coco(tmp_path / "coco", coco)
    (tmp_path / "voc").mkdir()
    make_voc_style(tmp_path / "voc")
    (tmp_path / "voc" / "classes.txt").write_text("bolt\nnut\n")
    (tmp_path / "voc" / "ImageSets" / "Main" / "train.txt").write_text("img_a\nimg_b\nimg_c\n")
    make_yolo(tmp_path / "yolo")
    return {
        "coco": ("train", tmp_path / "coco"),
        "voc": ("train", tmp_path / "voc"),
        "yolo": ("train", tmp_path / "yolo"),
    }


def _same(before, after, tolerance_of_size):
    assert before.keys() == after.keys()
    for name, (w, h, anns) in before.items():
        w2, h2, anns2 = after[name]
        assert (w, h) == (w2, h2) and len(anns) == len(anns2), name
        for (c, box, crowd, difficult), (c2, box2, crowd2, difficult2) in zip(anns, anns2):
            assert c == c2, name
            if tolerance_of_size:
                np.testing.assert_allclose(box, box2, rtol=0, atol=tolerance_of_size * max(w, h))
            else:
                assert box == box2, name  # exactly
            assert (crowd, difficult) == (crowd2, difficult2) or tolerance_of_size, name


@pytest.mark.parametrize("source, via", list(itertools.permutations(["coco", "voc", "yolo"], 2)))
def test_round_trip_gives_the_same_boxes(tmp_path, source, via, capsys):
    tool = convert_tool()
    split, folder = _sources(tmp_path)[source]
    original, classes = _read(source, _options(source, folder, split))
    there, back = tmp_path / f"as_{via}", tmp_path / f"back_{source}"
    tool.main(
        [
            "--from",
            source,
            *map(str, _options(source, folder, split)),
            "--to",
            via,
            "--output",
            str(there),
            "--output-split",
            split,
        ]
    )
    tool.main(
        [
            "--from",
            via,
            *map(str, _options(via, there, split)),
            "--to",
            source,
            "--output",
            str(back),
            "--output-split",
            split,
        ]
    )
    returned, classes_back = _read(source, _options(source, back, split))
    assert classes_back == classes
    if {source, via} == {"coco", "voc"} and source == "coco":
        # VOC has no crowd regions: the one crowd box of the COCO set is left out, said so.
        assert "note: 1 crowd regions left out (VOC has none)" in capsys.readouterr().out
        original = {k: (w, h, [a for a in anns if not a[2]]) for k, (w, h, anns) in original.items()}
    if via == "yolo" or source == "yolo":
        original = {k: (w, h, [a for a in anns if not a[2]]) for k, (w, h, anns) in original.items()}
    _same(original, returned, YOLO_TOLERANCE if "yolo" in (source, via) else 0)
    if source == "voc" and via == "coco":
        assert any(a[3] for _, _, anns in returned.values() for a in anns)  # difficult survives COCO


def test_output_folder_must_be_new(tmp_path):
    tool = convert_tool()
    split, folder = _sources(tmp_path)["voc"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--from", "voc", "--root", str(folder), "--to", "coco", "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
