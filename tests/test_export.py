"""ONNX and TorchScript export: the exported files detect what the PyTorch model detects.

A tiny r18 detector per head, trained by train_det.py on eight shapes_val images, is exported to
both formats once per module. Parity: at least 99% of the PyTorch ``Predictor``'s detections have a
match in the exported model's (same label, IoU > 0.99, score within 1e-3) on shapes_val images,
whose random sizes give several input sizes, and on real COCO photos; AP on shapes_val within 0.001.
The tools (export.py, infer.py --model, eval.py --model) and their one-line errors run in process.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from resnet_det.data import get_dataset
from resnet_det.data.shapes import CLASS_NAMES
from resnet_det.engine.export import export_model
from resnet_det.engine.exported_model import ExportedModel, ExportedPredictor
from resnet_det.engine.predictor import Predictor, load_detector
from resnet_det.evaluation import evaluate_detections

pytest.importorskip("onnxruntime", reason="the export extra (pip install -e .[export]) is not installed")
pytestmark = pytest.mark.slow  # the module's fixture trains a detector per head (about 2 minutes)

REPO = Path(__file__).resolve().parents[1]
HEADS = ("c4", "fpn")
FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
AP_IMAGES = 8  # shapes_val images compared (of 100; their sizes vary)
TRAIN_ITERS = {"fpn": 100, "c4": 80}
MIN_AP = {"fpn": 0.1, "c4": 0.05}  # the trained models' AP on those images is well above (see runs)


def tool(name: str):
    """A tools/ script as a module, so that its ``main`` runs in this process (no interpreter start-up)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets")


def train_command(head: str, split: Path, images: Path, output: Path) -> list:
    """tools/train_det.py from scratch on ``split``: r18 with BatchNorm trained, tiny images."""
    iterations = TRAIN_ITERS[head]
    return [
        sys.executable,
        str(REPO / "tools" / "train_det.py"),
        "--head",
        head,
        "--backbone",
        "r18",
        "--train-json",
        str(split),
        "--train-images",
        str(images),
        "--output",
        str(output),
        "--max-iter",
        str(iterations),
        "--batch-size",
        "4",
        "--lr",
        "0.02",
        "--seed",
        "0",
        "model.backbone.weights=null",
        "model.backbone.norm=bn",
        "model.backbone.freeze_at=0",
        # The shapes recipes' anchors (objects of 16..96 px). The C4 head's res5 runs on every RoI:
        # it samples fewer and pools 7x7 (14 in the recipes), which the export treats alike.
        f"model.anchors.sizes={'[[16],[32],[64],[128],[256]]' if head == 'fpn' else '[[16,32,64,128,256]]'}",
        f"model.roi_heads.batch_size_per_image={32 if head == 'fpn' else 16}",
        "model.roi_heads.pooler_resolution=7",
        "model.rpn.pre_nms_topk_train=500",
        "model.rpn.post_nms_topk_train=128",
        "model.rpn.pre_nms_topk_test=200",
        "model.rpn.post_nms_topk_test=50",
        "input.min_size_train=[96,112]",
        "input.max_size_train=128",
        "input.min_size_test=112",
        "input.max_size_test=128",
        "solver.warmup_iters=10",
        f"solver.steps=[{iterations * 4 // 5}]",
        "datasets.test=[]",
        "dataloader.num_workers=0",
        f"train.checkpoint_period={iterations}",
        "test.batch_size=1",
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    """One run folder per head, as train_det.py leaves it, trained on the AP_IMAGES shapes_val images
    that the parity tests compare: the AP to agree on is then far from 0 after a short run (the two
    heads train side by side, a core each). Parity is under test here, not generalisation."""
    records, _ = get_dataset("shapes_val", root=data_root)
    folder = Path(records[0]["file_name"]).parents[1]
    coco = json.loads((folder / "annotations" / "instances_val.json").read_text())
    ids = {r["image_id"] for r in records[:AP_IMAGES]}
    coco["images"] = [image for image in coco["images"] if image["id"] in ids]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    split = tmp_path_factory.mktemp("split") / "val8.json"
    split.write_text(json.dumps(coco))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    folders = {head: tmp_path_factory.mktemp(f"run_{head}") / "run" for head in HEADS}
    procs = {
        head: subprocess.Popen(
            train_command(head, split, folder / "val", folders[head]),
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for head in HEADS
    }
    for head, proc in procs.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"training {head} failed:\n{err[-3000:]}"
    return folders


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """``(head, format) -> file``, each exported once."""
    files = {}
    for head, run in runs.items():
        loaded = load_detector(run=run)
        for fmt, name in FORMATS.items():
            files[head, fmt] = export_model(loaded, fmt, tmp_path_factory.mktemp(f"{head}_{fmt}") / name)
    return files


@pytest.fixture(scope="module")
def shapes_val(data_root):
    records, metadata = get_dataset("shapes_val", root=data_root)
    return records[:AP_IMAGES], metadata


def matched_fraction(ref, other) -> float:
    """The fraction of ``ref``'s detections with a match in ``other``: same label, IoU > 0.99,
    score within 1e-3 (each of ``other``'s used once). A box clipped to nothing at the border (under
    1 px², which random weights propose) has no IoU to speak of: its corners must agree to 0.01 px."""
    if len(ref["boxes"]) == 0:
        return 1.0
    if len(other["boxes"]) == 0:
        return 0.0
    iou = box_iou(torch.as_tensor(ref["boxes"]), torch.as_tensor(other["boxes"])).numpy()
    same = (ref["labels"][:, None] == other["labels"][None, :]) & (
        np.abs(ref["scores"][:, None] - other["scores"][None, :]) <= 1e-3
    )
    degenerate = torch.as_tensor(ref["boxes"])
    degenerate = ((degenerate[:, 2] - degenerate[:, 0]) * (degenerate[:, 3] - degenerate[:, 1]) < 1).numpy()
    corners = np.abs(ref["boxes"][:, None, :] - other["boxes"][None, :, :]).max(axis=2) <= 0.01
    iou = np.where(degenerate[:, None] & corners, 1.0, iou)
    ok = (iou > 0.99) & same
    used = np.zeros(len(other["boxes"]), bool)
    matched = 0
    for i in range(len(ref["boxes"])):
        candidates = np.where(ok[i] & ~used)[0]
        if len(candidates):
            used[candidates[np.argmax(iou[i, candidates])]] = True
            matched += 1
    return matched / len(ref["boxes"])


def as_coco(det, image_id):
    return [
        {"image_id": image_id, "category_id": int(label), "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)}
        for (x0, y0, x1, y1), label, score in zip(det["boxes"].tolist(), det["labels"], det["scores"])
    ]


def check_parity(run, path, images, score_thresh=0.05):
    """Both models on ``images``; asserts the match rate and returns both models' detections."""
    ours = Predictor(load_detector(run=run), torch.device("cpu"), score_thresh=score_thresh)
    model = ExportedModel(path)
    theirs = ExportedPredictor(model, model.config(), score_thresh=score_thresh)
    refs, outs = [ours(image) for image in images], [theirs(image) for image in images]
    total = sum(len(ref["boxes"]) for ref in refs)
    matched = sum(matched_fraction(ref, out) * len(ref["boxes"]) for ref, out in zip(refs, outs))
    assert total > 20, "too few detections to compare"
    assert matched / total >= 0.99, (matched, total)
    return refs, outs


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("head", HEADS)
def test_exported_detections_and_ap_match_pytorch_on_shapes_val(runs, exported, shapes_val, head, fmt):
    records, metadata = shapes_val
    images = [cv2.imread(r["file_name"])[:, :, ::-1].copy() for r in records]
    # Several input sizes: the graph's height and width are dynamic.
    assert len({image.shape[:2] for image in images}) >= 5
    refs, outs = check_parity(runs[head], exported[head, fmt], images)
    ap = [
        evaluate_detections(
            [d for det, r in zip(dets, records) for d in as_coco(det, r["image_id"])], records, metadata, "coco"
        )["summary"]["AP"]
        for dets in (refs, outs)
    ]
    assert ap[0] > MIN_AP[head], f"the trained {head} model's AP is {ap[0]:.3f}: too close to 0 to compare"
    assert abs(ap[0] - ap[1]) <= 0.001, ap


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("head", HEADS)
def test_exported_detections_match_pytorch_on_real_photos(runs, exported, shared_data, head, fmt):
    folder = shared_data / "coco_mini" / "images"
    images = [cv2.imread(str(p))[:, :, ::-1].copy() for p in sorted(folder.iterdir())[:2]]
    check_parity(runs[head], exported[head, fmt], images, score_thresh=0.0)


def test_file_carries_its_metadata(runs, exported):
    for (head, fmt), path in exported.items():
        model = ExportedModel(path)
        assert model.kind == fmt
        assert model.class_names == list(CLASS_NAMES)
        assert model.label_to_category_id == {1: 1, 2: 2, 3: 3}
        fmt_meta = json.loads(model.meta["input_format"])
        assert fmt_meta["normalisation"]["pixel_std"] == [58.395, 57.12, 57.375]
        assert model.config().model.head == head
        from resnet_det.config import config_hash

        assert model.meta["config_hash"] == config_hash(load_detector(run=runs[head]).cfg)


def test_tools_export_infer_and_eval_with_model(runs, exported, shapes_val, tmp_path, capsys):
    """tools/export.py itself runs in the --int8 case below; the fixture's files come from export_model."""
    records, _ = shapes_val
    out = exported["fpn", "onnx"]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for r in records[:2]:
        (inputs / Path(r["file_name"]).name).write_bytes(Path(r["file_name"]).read_bytes())
    infer = tool("infer")
    infer.main(["--model", str(out), "--input", str(inputs), "--output", str(tmp_path / "a"), "--score-thresh", "0.05"])
    # --run in fp32, the exported model's precision (its default, auto, is bf16 where the CPU has it).
    infer.main(
        [
            "--run",
            str(runs["fpn"]),
            "--precision",
            "fp32",
            "--input",
            str(inputs),
            "--output",
            str(tmp_path / "b"),
            "--score-thresh",
            "0.05",
        ]
    )
    a = json.loads((tmp_path / "a" / "detections.json").read_text())
    b = json.loads((tmp_path / "b" / "detections.json").read_text())
    assert [r["file"] for r in a] == [r["file"] for r in b] and sum(len(r["boxes"]) for r in a) > 0
    assert [r["classes"] for r in a] == [r["classes"] for r in b]
    assert sorted((tmp_path / "a").glob("*.png"))
    # --int8: the fully connected layers quantised (onnxruntime's dynamic quantisation), metadata kept.
    int8 = tmp_path / "det_int8.onnx"
    tool("export").main(["--run", str(runs["fpn"]), "--format", "onnx", "--int8", "--output", str(int8)])
    import onnx

    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops and "Conv" in ops and "ConvInteger" not in ops
    quantized = ExportedModel(int8)
    assert quantized.class_names == list(CLASS_NAMES) and quantized.meta["precision"].startswith("int8")
    assert len(
        quantized([torch.from_numpy(np.ascontiguousarray(cv2.imread(records[0]["file_name"]))).permute(2, 0, 1)])[0][
            "boxes"
        ]
    )
    # eval.py --model on a 3-image split cut from shapes_val (the whole split would take long).
    folder = Path(records[0]["file_name"]).parents[1]
    coco = json.loads((folder / "annotations" / "instances_val.json").read_text())
    coco["images"] = coco["images"][:3]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] <= 3]
    (tmp_path / "val3.json").write_text(json.dumps(coco))
    split = [
        f"datasets.custom.val3.images={folder / 'val'}",
        f"datasets.custom.val3.annotations={tmp_path / 'val3.json'}",
    ]
    capsys.readouterr()
    model = str(exported["c4", "torchscript"])
    tool("eval").main(["--model", model, "--dataset", "val3", "--output", str(tmp_path / "report"), *split])
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["dataset"] == "val3" and report["checkpoint"] == model and "AP" in report["summary"]
    assert report["num_images"] == 3


def test_bad_input_gets_one_line_errors(runs, exported, tmp_path, capsys, monkeypatch):
    export = tool("export")
    with pytest.raises(SystemExit):
        export.main(
            ["--run", str(runs["c4"]), "--format", "onnx", "--output", str(tmp_path / "x.onnx"), "--opset", "9"]
        )
    assert capsys.readouterr().err.strip() == "error: --opset 9 is not supported: give 11..20 (default 17)"

    infer = tool("infer")
    args = ["--input", str(tmp_path), "--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit):
        infer.main(["--model", str(runs["c4"] / "model_final.pth"), *args])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --model ") and "is a PyTorch checkpoint, not an exported model" in err
    assert len(err.splitlines()) == 1
    text = tmp_path / "notes.onnx"
    text.write_text("hello")
    with pytest.raises(SystemExit):
        infer.main(["--model", str(text), *args])
    assert "neither an ONNX file nor a TorchScript archive" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    with pytest.raises(SystemExit):
        infer.main(["--model", str(exported["c4", "onnx"]), *args])
    err = capsys.readouterr().err.strip()
    assert err.endswith("running ONNX needs onnxruntime: pip install -e .[export]") and len(err.splitlines()) == 1
