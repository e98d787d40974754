"""Files made by someone else: pickles that would run a command, file names that climb out of their
folder, names with HTML in them, XML bombs, images and JSON files that claim enormous sizes.

Every hostile file is made here. A pickle's payload runs ``touch <marker>``: the marker must not
exist after the toolkit refused the file (and does exist when the user opts in with
``--trust-checkpoint``, which shows the payload is real).
"""

import ast
import importlib.util
import json
import logging
import os
import pickle
import random
import re
import shlex
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from data_fixtures import make_cifar, make_coco, make_voc, voc_xml, write_image
from test_eval_report import detections_of, voc_like

from backbones import build_backbone
from backbones.errors import UnsafeFileError
from backbones.serialization import load_pickle, trust_checkpoints
from resnet_det.data.cifar import load_cifar10
from resnet_det.data.coco import load_coco_json
from resnet_det.data.image_io import header_size, read_image
from resnet_det.data.sanitize import BadRecordPolicy, RecordSanitizer
from resnet_det.data.voc import load_voc_split
from resnet_det.engine.checkpoint import Checkpointer, capture_rng_state, restore_rng_state
from resnet_det.errors import DatasetError, EvaluationError
from resnet_det.evaluation import evaluate_detections
from resnet_det.evaluation.coco import read_json
from resnet_det.evaluation.report import format_markdown, format_table, write_report
from resnet_det.utils.file_io import atomic_torch_save
from resnet_det.utils.safe_paths import inside, output_name, output_path

REPO = Path(__file__).resolve().parents[1]
SHAPES_FPN = REPO / "configs" / "shapes" / "faster_rcnn_fpn.yaml"


class RunsCommand:
    """Unpickling this runs a shell command (as a shared ``evil.pth`` would)."""

    def __init__(self, marker: Path):
        self.command = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "the-payload-ran"


def evil_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint in our layout whose model weights are a command."""
    torch.save({"model": RunsCommand(marker), "meta": {"kind": "detection"}, "iteration": 5}, path)
    return path


def evil_pickle(path: Path, marker: Path, protocol: int = 2) -> Path:
    path.write_bytes(pickle.dumps({b"data": RunsCommand(marker), "blobs": {}}, protocol=protocol))
    return path


def refused_line(path: Path, call: str = "posix.system") -> str:
    return re.escape(f"{path} is refused: loading it would call {call}, which is not part of tensors")


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(name: str, argv, capsys) -> str:
    """The tool in this process, as a user runs it: a refused file exits with status 2 and one line."""
    with pytest.raises(SystemExit) as exit_info:
        load_tool(name).main([str(a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


# -- 1. nothing loaded runs code ----------------------------------------------------------------


def test_checkpointer_refuses_a_checkpoint_that_runs_code(tmp_path, marker):
    path = evil_checkpoint(tmp_path / "model_final.pth", marker)
    with pytest.raises(UnsafeFileError, match=refused_line(path)) as error:
        Checkpointer(tmp_path, is_main=False).load(path)
    assert "pass --trust-checkpoint if you trust the file" in str(error.value)
    assert "\n" not in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("tool", ["infer", "eval"])
def test_eval_and_infer_weights_refuse_a_checkpoint_that_runs_code(tmp_path, marker, capsys, tool):
    path = evil_checkpoint(tmp_path / "evil.pth", marker)
    argv = ["--config", SHAPES_FPN, "--weights", path, "--device", "cpu"]
    if tool == "infer":
        image = tmp_path / "photo.png"
        write_image(image, 16, 16)
        argv += ["--input", image, "--output", tmp_path / "out"]
    line = run_tool(tool, argv, capsys)
    assert re.match("error: " + refused_line(path), line), line
    assert not marker.exists()


def test_resume_of_a_run_folder_from_elsewhere_refuses_a_checkpoint_that_runs_code(tmp_path, marker, capsys):
    """train_cls.py --resume: the newest checkpoint is refused, not skipped for an older one."""
    make_cifar(tmp_path / "data", per_batch=4)
    run = tmp_path / "run"
    run.mkdir()
    evil_checkpoint(run / "model_0000002.pth", marker)
    (run / "last_checkpoint").write_text("model_0000002.pth\n")
    argv = [
        "--dataset",
        "cifar10",
        "--data-root",
        tmp_path / "data",
        "--model",
        "cifar_r8",
        "--output",
        run,
        "--resume",
        "--device",
        "cpu",
        "--max-iter",
        "4",
        "--batch-size",
        "4",
        "dataloader.num_workers=0",
    ]
    line = run_tool("train_cls", argv, capsys)
    assert re.match("error: " + refused_line(run / "model_0000002.pth"), line), line
    assert not marker.exists()


def test_last_checkpoint_cannot_point_outside_the_run_folder(tmp_path, marker):
    outside = evil_checkpoint(tmp_path / "elsewhere.pth", marker)
    run = tmp_path / "run"
    run.mkdir()
    (run / "last_checkpoint").write_text(f"{outside}\n")
    assert Checkpointer(run).latest() == run / "elsewhere.pth"


@pytest.mark.parametrize("weights_kind", ["classification checkpoint", "state dict", "MSRA .pkl"])
def test_backbone_weights_refuse_files_that_run_code(tmp_path, marker, weights_kind):
    if weights_kind == "classification checkpoint":
        path = tmp_path / "cls.pth"
        torch.save({"model": RunsCommand(marker), "meta": {"kind": "classification", "arch": "r18"}}, path)
    elif weights_kind == "state dict":
        path = tmp_path / "r18.pth"
        torch.save({"conv1.weight": RunsCommand(marker)}, path)
    else:
        path = evil_pickle(tmp_path / "R-18.pkl", marker)
    with pytest.raises(UnsafeFileError, match=refused_line(path)):
        build_backbone("r18", weights=path)
    assert not marker.exists()


def test_train_cls_weights_refuse_a_classification_checkpoint_that_runs_code(tmp_path, marker, capsys):
    make_cifar(tmp_path / "data", per_batch=4)
    path = tmp_path / "cls.pth"
    torch.save({"model": RunsCommand(marker), "meta": {"kind": "classification"}}, path)
    argv = [
        "--dataset",
        "cifar10",
        "--data-root",
        tmp_path / "data",
        "--model",
        "cifar_r8",
        "--output",
        tmp_path / "run",
        "--weights",
        path,
        "--device",
        "cpu",
        "--max-iter",
        "1",
        "--batch-size",
        "4",
        "dataloader.num_workers=0",
    ]
    line = run_tool("train_cls", argv, capsys)
    assert re.match("error: " + refused_line(path), line), line
    assert not marker.exists()


def test_a_cifar_batch_that_runs_code_is_refused_and_no_flag_trusts_it(tmp_path, marker, capsys):
    folder = make_cifar(tmp_path / "data", per_batch=4)
    batch = evil_pickle(folder / "data_batch_3", marker)
    with pytest.raises(UnsafeFileError, match=refused_line(batch)) as error:
        load_cifar10(tmp_path / "data", train=True)
    assert str(error.value).endswith("replace it with a copy from its source")
    with trust_checkpoints(), pytest.raises(UnsafeFileError):
        load_cifar10(tmp_path / "data", train=True)
    line = run_tool(
        "train_cls",
        [
            "--dataset",
            "cifar10",
            "--data-root",
            tmp_path / "data",
            "--model",
            "cifar_r8",
            "--output",
            tmp_path / "run",
            "--device",
            "cpu",
            "--max-iter",
            "1",
            "--trust-checkpoint",
            "dataloader.num_workers=0",
        ],
        capsys,
    )
    assert re.match("error: " + refused_line(batch), line), line
    assert not marker.exists()


def test_real_cifar_style_batches_still_load(tmp_path):
    """What the safe unpickler must accept: Python 2 style protocol-2 batches and today's pickles."""
    folder = make_cifar(tmp_path / "data", per_batch=3)
    data = np.zeros((3, 3072), np.uint8)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": data, b"labels": [1, 2, 3]}, protocol=2))
    images, labels, names = load_cifar10(tmp_path / "data", train=True)
    assert images.shape == (15, 32, 32, 3) and labels[3:6].tolist() == [1, 2, 3] and names[0] == "airplane"


def test_trust_checkpoint_loads_the_file_with_a_warning(tmp_path, marker, caplog, capsys):
    """The opt-in works, for the call that asks, and says so: which shows the payload is real."""
    path = evil_checkpoint(tmp_path / "evil.pth", marker)
    image = tmp_path / "photo.png"
    write_image(image, 16, 16)
    argv = [
        "--config",
        SHAPES_FPN,
        "--weights",
        path,
        "--input",
        image,
        "--output",
        tmp_path / "out",
        "--device",
        "cpu",
    ]
    with caplog.at_level(logging.WARNING):
        line = run_tool("infer", [*argv, "--trust-checkpoint"], capsys)
    assert marker.exists()
    warning = next(r.getMessage() for r in caplog.records if "full unpickling" in r.getMessage())
    assert str(path) in warning and "--trust-checkpoint" in warning and "posix.system" in warning
    assert "refused" not in line  # loaded; what it holds is then no detector
    marker.unlink()
    with pytest.raises(UnsafeFileError):  # the next call has not opted in
        Checkpointer(tmp_path, is_main=False).load(path)
    assert not marker.exists()


def test_our_checkpoints_load_with_plain_weights_only_and_resume_the_random_streams(tmp_path):
    """Random states are tensors and plain data: PyTorch's own safe loader takes the file as it is,
    and restoring it draws exactly what an uninterrupted run draws."""
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # a cached Gaussian in numpy's state
    Checkpointer(tmp_path).save(7, {"model": {"w": torch.ones(2)}, "rng": capture_rng_state()})
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    state = torch.load(tmp_path / "model_0000007.pth", weights_only=True)
    random.random(), np.random.rand(), torch.rand(3)
    restore_rng_state(state["rng"])
    assert (random.random(), np.random.randn(3).tolist()) == expected[:2] and torch.equal(torch.rand(3), expected[2])


def test_checkpoints_written_by_training_load_with_plain_weights_only(tmp_path):
    """Everything training stores (optimizer, scheduler, scaler, meta, every random state) is
    tensors and plain data: PyTorch's own safe loader, without our numpy allow-list, takes it."""
    make_cifar(tmp_path / "data", per_batch=4)
    load_tool("train_cls").main(
        [
            "--dataset",
            "cifar10",
            "--data-root",
            str(tmp_path / "data"),
            "--model",
            "cifar_r8",
            "--output",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            "--max-iter",
            "1",
            "--batch-size",
            "4",
            "dataloader.num_workers=0",
        ]
    )
    periodic = torch.load(tmp_path / "run" / "model_0000001.pth", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "meta"} <= periodic.keys()
    assert torch.load(tmp_path / "run" / "model_final.pth", weights_only=True)["meta"]["arch"] == "cifar_r8"


def test_checkpoints_of_the_previous_format_still_resume(tmp_path):
    """Before, numpy's state was stored as its own tuple (with an array): still safe to read, as
    arrays are rebuilt without running code, and restored the same."""
    old_rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    atomic_torch_save({"model": {}, "rng": old_rng}, tmp_path / "model_0000003.pth")
    expected = np.random.rand(4).tolist()
    state = Checkpointer(tmp_path).load(tmp_path / "model_0000003.pth")
    restore_rng_state(state["rng"])
    assert np.random.rand(4).tolist() == expected


def test_no_module_loads_a_pickle_past_the_safe_loaders():
    """The one place that may unpickle fully is backbones/serialization.py (behind the opt-in); no
    np.load, torch.load, pickle.load, yaml.load or stdlib XML parse anywhere else."""
    unsafe = {
        ("pickle", "load"),
        ("pickle", "loads"),
        ("torch", "load"),
        ("np", "load"),
        ("numpy", "load"),
        ("yaml", "load"),
        ("yaml", "unsafe_load"),
        ("ET", "parse"),
        ("ET", "fromstring"),
        ("marshal", "loads"),
    }
    found = []
    for folder in ("backbones", "resnet_det", "tools"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == REPO / "backbones" / "serialization.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    owner = node.func.value
                    name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
                    keywords = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                    if (name, node.func.attr) in unsafe or keywords.get("weights_only") is False:
                        found.append(f"{path.relative_to(REPO)}:{node.lineno} {name}.{node.func.attr}")
                    if node.func.attr == "load" and keywords.get("allow_pickle") is True:
                        found.append(f"{path.relative_to(REPO)}:{node.lineno} allow_pickle=True")
    assert found == []


def test_load_pickle_accepts_arrays_and_plain_data_only(tmp_path, marker):
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps({"a": np.arange(3, dtype=np.float32), "b": [1, "x", b"y", 2.5, None]}))
    loaded = load_pickle(good)
    assert loaded["a"].tolist() == [0.0, 1.0, 2.0] and loaded["b"] == [1, "x", b"y", 2.5, None]
    bad = evil_pickle(tmp_path / "bad.pkl", marker, protocol=4)
    with pytest.raises(UnsafeFileError, match=refused_line(bad)):
        load_pickle(bad)
    assert not marker.exists()


# -- 2. file names in the data stay inside their folders --------------------------------------------


@pytest.mark.parametrize("file_name", ["../../outside.png", "sub/../../outside.png", "ABSOLUTE"])
def test_coco_file_names_cannot_leave_the_images_folder(tmp_path, file_name):
    outside = tmp_path / "outside.png"
    write_image(outside, 40, 60)
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 60}],
        "annotations": [],
        "categories": [{"id": 1, "name": "thing"}],
    }
    json_path, images = make_coco(tmp_path / "set", data)
    data["images"][0]["file_name"] = str(outside) if file_name == "ABSOLUTE" else file_name
    json_path.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as error:
        load_coco_json(json_path, images, RecordSanitizer(BadRecordPolicy.default()))
    message = str(error.value)
    assert message.startswith(f"{json_path}: image 1: file name {data['images'][0]['file_name']!r} points outside")
    assert str(images) in message and "\n" not in message


def test_coco_file_names_in_subfolders_still_load(tmp_path):
    data = {
        "images": [{"id": 1, "file_name": "train/a.png", "height": 40, "width": 60}],
        "annotations": [],
        "categories": [{"id": 1, "name": "thing"}],
    }
    json_path, images = make_coco(tmp_path / "set", data)
    records, _ = load_coco_json(json_path, images, RecordSanitizer(BadRecordPolicy.default()))
    assert records[0]["file_name"] == str(images / "train" / "a.png")


def test_voc_ids_cannot_leave_the_devkit(tmp_path):
    voc_root = make_voc(tmp_path, "2007", "test", {"000001": {"size": (40, 30), "objects": []}})
    (tmp_path / "stolen.xml").write_text(voc_xml(40, 30, []))
    ids = voc_root / "ImageSets" / "Main" / "test.txt"
    ids.write_text("000001\n../../../stolen\n")
    with pytest.raises(DatasetError) as error:
        load_voc_split(voc_root, "test", RecordSanitizer(BadRecordPolicy.default()))
    assert str(error.value).startswith(f"{ids}: line 2: file name '../../../stolen.xml' points outside")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("../../x.jpg", "x.jpg"),
        ("/etc/cron.d/job", "job"),
        ("..\\..\\win.png", "win.png"),
        ("..", "output"),
        (".bashrc", "bashrc"),
        ("a b;rm -rf ~.png", "a_b_rm_-rf__.png"),
        ("voc_2007_test", "voc_2007_test"),
    ],
)
def test_output_names_are_plain_file_names(tmp_path, name, expected):
    assert output_name(name) == expected
    out = output_path(tmp_path / "out", name)
    assert out.parent == tmp_path / "out" and out.name == expected


def test_inside_keeps_names_in_the_folder(tmp_path):
    assert inside(tmp_path, "a/b.jpg", "here") == str(tmp_path / "a" / "b.jpg")
    for bad in ("../x.jpg", "/x.jpg", "a/../../x.jpg", "."):
        with pytest.raises(DatasetError, match="here: file name"):
            inside(tmp_path, bad, "here")


def test_infer_writes_drawn_images_only_into_output(tmp_path, capsys):
    """A run folder made here (random weights): the drawn image lands as a plain name in --output."""
    from omegaconf import OmegaConf

    from resnet_det.config import DetectionConfig, load_config
    from resnet_det.modeling import build_detector

    cfg = load_config(
        DetectionConfig, SHAPES_FPN, ["model.backbone.weights=null", "input.min_size_test=32", "input.max_size_test=64"]
    )
    model = build_detector(cfg, 2)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    meta = {
        "kind": "detection",
        "arch": cfg.model.backbone.name,
        "head": cfg.model.head,
        "num_classes": 2,
        "class_names": ["<b>x</b>", "y|z"],
        "label_to_category_id": {1: 1, 2: 2},
    }
    torch.save({"model": model.state_dict(), "iteration": 1, "meta": meta}, run / "model_final.pth")
    images = tmp_path / "in"
    write_image(images / ".. .png", 24, 24)
    load_tool("infer").main(
        ["--run", str(run), "--input", str(images), "--output", str(tmp_path / "out"), "--device", "cpu"]
    )
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["_.png", "detections.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out", "run"]


# -- 3. reports escape what the data says ---------------------------------------------------------


def hostile_report():
    records, metadata = voc_like()
    # Then a malformed formula for matplotlib's mathtext; a terminal escape and a newline.
    metadata = {**metadata, "class_names": ["<script>alert(1)</script>", "a|b $\\frac{x$", "red\x1b[31m\nline"]}
    detections = detections_of(records)
    report = evaluate_detections(detections, records, metadata)
    report.update(checkpoint="runs/<img src=x onerror=alert(1)>/model_final.pth", dataset="d|`x`*y*")
    return report, detections


def test_report_md_shows_names_with_html_and_pipes_as_text(tmp_path):
    report, detections = hostile_report()
    markdown = write_report(report, detections, tmp_path / "eval")["report.md"].read_text()
    assert "<script>" not in markdown and "<img" not in markdown
    assert "| &lt;script&gt;alert(1)&lt;/script&gt; | 1.000 |" in markdown
    assert "| a\\|b $\\\\frac{x$ | 1.000 |" in markdown
    assert "checkpoint: runs/&lt;img src=x onerror=alert(1)&gt;/model\\_final.pth" in markdown
    assert markdown.startswith("# Evaluation on d\\|\\`x\\`\\*y\\*\n")
    per_class = markdown.split("## Per class")[1].split("\n\n")[1].splitlines()
    # Every row of the table has as many unescaped cell separators as its header.
    cells = [len(re.findall(r"(?<!\\)\|", row)) for row in per_class]
    assert len(set(cells)) == 1, per_class


def test_report_plot_and_terminal_take_mathtext_and_control_characters(tmp_path):
    report, detections = hostile_report()
    paths = write_report(report, detections, tmp_path / "eval")
    assert paths["pr_curves.png"].read_bytes().startswith(b"\x89PNG")
    table = format_table(report)
    assert "\x1b" not in table and "red [31m line" in table
    markdown = format_markdown(report)
    assert "\x1b" not in markdown and "| red \\[31m line | - |" in markdown


# -- 4. hostile inputs stay bounded ---------------------------------------------------------------

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE annotation [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><size><width>40</width><height>30</height></size>
<object><name>&lol9;</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>
</annotation>
"""


def external_entity(secret: Path) -> str:
    return (
        f'<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file://{secret}">]>\n'
        "<annotation><size><width>40</width><height>30</height></size>"
        "<object><name>&secret;</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
        "</object></annotation>\n"
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("attack", ["billion laughs", "external entity"])
def test_voc_xml_with_entities_is_refused(tmp_path, attack):
    voc_root = make_voc(tmp_path, "2007", "test", {"000001": {"size": (40, 30), "objects": []}})
    xml_path = voc_root / "Annotations" / "000001.xml"
    secret = tmp_path / "secret.txt"
    secret.write_text("person")
    xml_path.write_text(BILLION_LAUGHS if attack == "billion laughs" else external_entity(secret))
    with pytest.raises(DatasetError) as error:
        load_voc_split(voc_root, "test", RecordSanitizer(BadRecordPolicy.default()))
    message = str(error.value)
    assert message.startswith(f"{xml_path}: XML with entity declarations or external references (")
    assert "refused" in message and "\n" not in message


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and a valid IHDR chunk claiming ``width x height`` RGB pixels; no image data."""
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))


def jpeg_header(width: int, height: int) -> bytes:
    """SOI, an APP0 segment, then a baseline SOF0 claiming ``width x height``."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_an_image_header_claiming_100000x100000_is_refused_before_decoding(tmp_path, kind, monkeypatch):
    path = tmp_path / f"bomb.{'png' if kind == 'png' else 'jpg'}"
    path.write_bytes(
        png_header(100000, 100000) if kind == "png" else jpeg_header(65000, 60000)
    )  # JPEG sides stop at 65535
    decoded = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(a) or None)
    with pytest.raises(DatasetError) as error:
        read_image(path)
    size = "100000x100000" if kind == "png" else "65000x60000"
    assert str(error.value).startswith(
        f"image {path} claims {size} pixels in its header, more than the limit of 268,435,456"
    )
    assert "RESNET_DET_MAX_IMAGE_PIXELS=" in str(error.value) and decoded == []


def test_the_pixel_limit_is_raised_by_its_environment_variable(tmp_path, monkeypatch):
    path = tmp_path / "real.png"
    write_image(path, 30, 40)
    assert header_size(np.fromfile(path, np.uint8)) == (40, 30)
    monkeypatch.setenv("RESNET_DET_MAX_IMAGE_PIXELS", "1199")
    with pytest.raises(DatasetError, match="claims 40x30 pixels in its header, more than the limit of 1,199"):
        read_image(path)
    monkeypatch.setenv("RESNET_DET_MAX_IMAGE_PIXELS", "1200")
    assert read_image(path).shape == (30, 40, 3)


def test_an_oversized_annotation_json_is_refused_unread(tmp_path, monkeypatch):
    json_path, images = make_coco(tmp_path / "set")
    size = json_path.stat().st_size
    monkeypatch.setenv("RESNET_DET_MAX_JSON_BYTES", str(size - 1))
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} was read"))
    with pytest.raises(DatasetError) as error:
        load_coco_json(json_path, images, RecordSanitizer(BadRecordPolicy.default()))
    assert str(error.value) == (
        f"{json_path} is {size:,} bytes, more than the limit for a JSON file ({size - 1:,}): not read; "
        f"if it is genuine, raise the limit with RESNET_DET_MAX_JSON_BYTES={size}"
    )
    monkeypatch.undo()
    monkeypatch.setenv("RESNET_DET_MAX_JSON_BYTES", str(size))
    records, _ = load_coco_json(json_path, images, RecordSanitizer(BadRecordPolicy.default()))
    assert len(records) == 3


def test_an_oversized_results_file_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "dets.json"
    path.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}] * 50))
    monkeypatch.setenv("RESNET_DET_MAX_JSON_BYTES", "1000")
    with pytest.raises(
        EvaluationError, match=r"dets.json is [\d,]+ bytes, more than the limit for a JSON file \(1,000\)"
    ):
        read_json(path, "results file")
