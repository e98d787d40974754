"""Timing and peak memory of our detector against torchvision's stock Faster R-CNN, in one run.

Both models are built with identical settings (image size, proposals before/after NMS,
detections per image, threads, number of classes) and timed alternately, run by run, so that a
machine whose speed drifts slows both alike and the ratios stay honest. The stock model is set up
the way torchvision fine-tunes it from ImageNet weights (frozen BN, ``trainable_backbone_layers=3``),
which is what ours does by default (frozen BN, ``freeze_at=2``: res3..res5 train): the same layers
get gradients in both, so the training ratio measures speed, not a design choice. With random weights the
number of proposals would depend on what the weights happen to propose, so the RPN's NMS is
disabled (IoU threshold 1.0): exactly ``post_nms_topk`` proposals reach the box head in both, and
RoIAlign takes torchvision's fixed 2x2 samples per bin in both.

Peak memory is the process's resident set high-water mark (Linux ``VmHWM``, reset before each
measure through ``/proc/self/clear_refs``) on CPU, and ``torch.cuda.max_memory_allocated`` on GPU.
"""

import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from resnet_det.config import DetectionConfig, load_config
from resnet_det.engine.data_scale import FIGURE_UNITS, bench_data_scale
from resnet_det.errors import ConfigError
from resnet_det.modeling import build_detector, prepare_for_inference

COCO_CLASSES = 90  # stock fasterrcnn_resnet50_fpn: 91 outputs, background included
# torchvision's default when fasterrcnn_resnet50_fpn starts from ImageNet weights: layer2..layer4
# train, the stem and layer1 are frozen (ours: model.backbone.freeze_at=2).
STOCK_TRAINABLE_LAYERS = 3


@dataclass
class Figure:
    """One measured quantity: per-run values, summarised as min / median / max."""

    name: str
    unit: str
    values: List[float]
    peak_memory_mb: Optional[float] = None
    higher_is_better: bool = True
    startup_s: Optional[float] = None  # one-off cost before the first call (export, session set-up)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def summary(self) -> Dict:
        return {
            "unit": self.unit,
            "min": min(self.values),
            "median": self.median,
            "max": max(self.values),
            "runs": len(self.values),
            "peak_memory_mb": self.peak_memory_mb,
            **({"startup_s": self.startup_s} if self.startup_s is not None else {}),
        }


@dataclass
class Settings:
    backbone: str = "r50"
    head: str = "fpn"
    size: int = 800  # inference short side
    max_size: int = 1333
    proposals: int = 1000  # RPN proposals after NMS, per image (pre-NMS: the same per level)
    detections: int = 100
    batch: int = 1  # inference images per batch
    train_size: int = 512
    train_batch: int = 2
    warmup: int = 2
    runs: int = 5
    threads: int = field(default_factory=torch.get_num_threads)
    device: str = "cpu"
    fast_path: bool = True
    compile_backend: Optional[str] = None  # torch.compile the backbone for inference (test.compile_backbone)
    scale_images: int = 117_266  # data-scale: the generated file's size (COCO train2017's)
    scale_boxes: int = 860_001
    scale_polygons: bool = True
    workers: int = 2
    # Extra inference paths of ours, timed in the same alternation as fp32 eager and stock.
    precisions: List[str] = field(default_factory=lambda: ["fp32"])  # fp32 | bf16 (autocast) | int8 (with onnxruntime)
    runtimes: List[str] = field(default_factory=lambda: ["torch"])  # torch | onnxruntime (exported fp32)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def _peak_mb(device: torch.device) -> Optional[float]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(
    fns: Dict[str, Callable[[], None]], warmup: int, runs: int, device: torch.device
) -> Dict[str, List[float]]:
    """Seconds per call of each function, called in turn (A B A B ...) after warm-up calls."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            _sync(device)
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def peak_memory(fn: Callable[[], None], device: torch.device) -> Optional[float]:
    _reset_peak(device)
    fn()
    _sync(device)
    return _peak_mb(device)


def detection_config(settings: Settings, training: bool):
    """Our detector's config with the benchmark's fixed settings (random weights)."""
    size = settings.train_size if training else settings.size
    return load_config(
        DetectionConfig,
        None,
        [
            f"model.head={settings.head}",
            f"model.backbone.name={settings.backbone}",
            "model.backbone.weights=null",
            f"model.anchors.sizes={[[32], [64], [128], [256], [512]] if settings.head == 'fpn' else [[32, 64, 128, 256, 512]]}",
            f"model.roi_heads.pooler_resolution={7 if settings.head == 'fpn' else 14}",
            # torchvision's fixed 2x2 samples per bin: with adaptive sampling (0) the cost of
            # RoIAlign would follow the sizes of whatever boxes random weights propose.
            "model.roi_heads.sampling_ratio=2",
            f"model.rpn.pre_nms_topk_test={settings.proposals}",
            f"model.rpn.post_nms_topk_test={settings.proposals}",
            f"model.rpn.pre_nms_topk_train={settings.proposals * 2}",
            f"model.rpn.post_nms_topk_train={settings.proposals}",
            "model.rpn.nms_thresh=1.0",
            f"model.roi_heads.detections_per_image={settings.detections}",
            f"input.min_size_train=[{size}]",
            f"input.max_size_train={settings.max_size}",
            f"input.min_size_test={size}",
            f"input.max_size_test={settings.max_size}",
            f"test.fold_frozen_bn={str(settings.fast_path).lower()}",
        ],
    )


def stock_model(settings: Settings, training: bool) -> torch.nn.Module:
    """torchvision's stock R50-FPN Faster R-CNN, as ``fasterrcnn_resnet50_fpn`` builds it for
    fine-tuning (``weights_backbone`` given: FrozenBatchNorm2d, ``trainable_backbone_layers=3``),
    with random weights and the benchmark's counts and sizes.

    ``fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)`` would train every layer with
    ordinary BatchNorm instead: a from-scratch design, not what either model does when fine-tuned.
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    size = settings.train_size if training else settings.size
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=STOCK_TRAINABLE_LAYERS
    )
    return FasterRCNN(
        backbone,
        num_classes=COCO_CLASSES + 1,
        min_size=size,
        max_size=settings.max_size,
        rpn_pre_nms_top_n_test=settings.proposals,
        rpn_post_nms_top_n_test=settings.proposals,
        rpn_pre_nms_top_n_train=settings.proposals * 2,
        rpn_post_nms_top_n_train=settings.proposals,
        rpn_nms_thresh=1.0,
        box_detections_per_img=settings.detections,
    )


def synthetic_images(n: int, height: int, width: int, seed: int = 0) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]


def synthetic_targets(n: int, height: int, width: int, seed: int = 0) -> List[Dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(n):
        xy = torch.rand(8, 2, generator=generator) * torch.tensor([width * 0.7, height * 0.7])
        wh = 16 + torch.rand(8, 2, generator=generator) * torch.tensor([width * 0.3, height * 0.3])
        targets.append(
            {
                "boxes": torch.cat([xy, xy + wh], 1),
                "labels": torch.randint(1, COCO_CLASSES + 1, (8,), generator=generator),
            }
        )
    return targets


def bench_inference(settings: Settings, device: torch.device) -> Dict[str, Figure]:
    """Images per second at the test size; our model gets images resized once by the loader
    (uint8), the stock model float images in 0..1 that its transform resizes and normalises."""
    height, width = settings.size, int(settings.size * 4 / 3)
    images = synthetic_images(settings.batch, height, width)
    ours = build_detector(detection_config(settings, training=False), COCO_CLASSES).eval().to(device)
    if settings.fast_path:
        ours = prepare_for_inference(ours, fold_bn=True, channels_last=True, compile_backend=settings.compile_backend)
    stock = stock_model(settings, training=False).eval().to(device)
    ours_in = [torch.from_numpy(im).permute(2, 0, 1).to(device) for im in images]
    stock_in = [t.float().div(255) for t in ours_in]
    mode = torch.inference_mode if settings.fast_path else torch.no_grad

    def run(model, inputs):
        def call():
            with mode():
                model(inputs)

        return call

    fns = {"ours": run(ours, ours_in), "stock": run(stock, stock_in)}
    startup: Dict[str, float] = {}
    if "bf16" in settings.precisions:
        fns["ours_bf16"] = autocast_call(run(ours, ours_in), device)
    if "onnxruntime" in settings.runtimes:
        if device.type != "cpu":
            raise ConfigError("--runtime onnxruntime is measured on the CPU: give --device cpu")
        for int8 in (False, True) if "int8" in settings.precisions else (False,):
            name = "ours_onnxruntime_int8" if int8 else "ours_onnxruntime"
            start = time.perf_counter()
            fns[name] = onnxruntime_call(ours, ours_in, settings.threads, int8)
            startup[name] = time.perf_counter() - start
    times = time_alternating(fns, settings.warmup, settings.runs, device)
    figures = {
        name: Figure("inference", "images/s", [settings.batch / t for t in times[name]], peak_memory(fns[name], device))
        for name in fns
    }
    for name, seconds in startup.items():
        figures[name].startup_s = seconds
    return figures


def autocast_call(call: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """``call`` under bf16 autocast (convolutions and matmuls in bf16, the rest in fp32)."""

    def bf16():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            call()

    return bf16


def onnxruntime_call(
    model: torch.nn.Module, images: List[torch.Tensor], threads: int, int8: bool = False
) -> Callable[[], None]:
    """``model`` exported to ONNX (``InferenceGraph``, as tools/export.py writes it; ``int8``: its
    fully connected layers quantised, as ``--int8`` does) and run by onnxruntime on the CPU, one
    image per call; the export, quantisation and session set-up are its start-up."""
    import warnings

    import onnx
    import onnxruntime

    from resnet_det.engine.export import quantize_int8
    from resnet_det.modeling.export_graph import InferenceGraph

    graph = InferenceGraph(prepare_for_inference(model.cpu(), channels_last=False)).eval()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            graph,
            (images[0].cpu(),),
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["image"],
            dynamic_axes={"image": {1: "height", 2: "width"}},
        )
        if int8:
            onnx.save(quantize_int8(onnx.load(str(path)), Path(tmp)), str(path))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    arrays = [im.cpu().numpy() for im in images]

    def call():
        for array in arrays:
            session.run(None, {"image": array})

    return call


def bench_training(settings: Settings, device: torch.device) -> Dict[str, Figure]:
    """Training iterations per second (forward, backward, SGD step) on ``train_batch`` images."""
    height, width = settings.train_size, int(settings.train_size * 4 / 3)
    images = [
        torch.from_numpy(im).permute(2, 0, 1).to(device) for im in synthetic_images(settings.train_batch, height, width)
    ]
    targets = [{k: v.to(device) for k, v in t.items()} for t in synthetic_targets(settings.train_batch, height, width)]
    ours = build_detector(detection_config(settings, training=True), COCO_CLASSES).train().to(device)
    stock = stock_model(settings, training=True).train().to(device)
    if device.type == "cuda":
        ours = ours.to(memory_format=torch.channels_last)

    def step_fn(model, inputs):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

        def step():
            losses = model(inputs, targets)
            opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            opt.step()

        return step

    fns = {"ours": step_fn(ours, images), "stock": step_fn(stock, [im.float().div(255) for im in images])}
    times = time_alternating(fns, settings.warmup, settings.runs, device)
    return {
        name: Figure("train_iteration", "iterations/s", [1 / t for t in times[name]], peak_memory(fns[name], device))
        for name in fns
    }


def bench_data_loading(settings: Settings, num_images: int = 64) -> Figure:
    """Training images per second out of the loader (JPEG decode + resize + flip + collate) with
    ``workers`` worker processes, on synthetic 640x480 JPEGs written to a temporary folder."""
    import cv2

    from resnet_det.data.build import build_detection_train_loader

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        records = []
        for i in range(num_images):
            # Smooth images, so that JPEG sizes (and decode costs) are like photographs'.
            small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
            image = cv2.resize(small, (640, 480), interpolation=cv2.INTER_CUBIC)
            path = Path(tmp) / f"{i:04d}.jpg"
            cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            records.append(
                {
                    "file_name": str(path),
                    "image_id": i,
                    "height": 480,
                    "width": 640,
                    "annotations": [{"bbox": [10.0, 20.0, 200.0, 220.0], "label": 1, "iscrowd": 0, "difficult": 0}],
                }
            )
        cfg = detection_config(settings, training=True)
        cfg.dataloader.num_workers = settings.workers
        cfg.solver.batch_size = settings.train_batch
        values = []
        batches_per_run = max(4, num_images // settings.train_batch // 2)
        loader = iter(build_detection_train_loader(cfg, records))
        for _ in range(settings.warmup):
            next(loader)
        for _ in range(settings.runs):
            start = time.perf_counter()
            for _ in range(batches_per_run):
                next(loader)
            values.append(batches_per_run * settings.train_batch / (time.perf_counter() - start))
        del loader
    return Figure("data_loading", "images/s", values)


def bench_coco_eval(settings: Settings, num_images: int = 500, dets_per_image: int = 100) -> Figure:
    """Seconds for a COCO box evaluation (pycocotools) of 500 images x 100 detections."""
    from pycocotools.coco import COCO

    from resnet_det.evaluation.coco import evaluate_coco

    rng = np.random.default_rng(0)
    images, annotations, detections = [], [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"})
        for _ in range(7):
            x, y, w, h = rng.uniform(0, 400), rng.uniform(0, 300), rng.uniform(8, 200), rng.uniform(8, 150)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": int(rng.integers(1, 11)),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for _ in range(dets_per_image):
            x, y, w, h = rng.uniform(0, 400), rng.uniform(0, 300), rng.uniform(8, 200), rng.uniform(8, 150)
            detections.append(
                {
                    "image_id": i,
                    "category_id": int(rng.integers(1, 11)),
                    "bbox": [x, y, w, h],
                    "score": float(rng.uniform()),
                }
            )
    gt = {"images": images, "annotations": annotations, "categories": [{"id": c, "name": str(c)} for c in range(1, 11)]}
    values = []
    for run in range(settings.runs + 1):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        start = time.perf_counter()
        evaluate_coco(coco, detections)
        if run:  # the first run is a warm-up
            values.append(time.perf_counter() - start)
    return Figure("coco_eval", "seconds", values, higher_is_better=False)


def synthetic_coco_eval_case(num_images: int = 500, dets_per_image: int = 100, seed: int = 0):
    """A COCO ground truth (dict) of ``num_images`` 640x480 images with 7 boxes each in 10 classes,
    and ``dets_per_image`` random detections per image, some near a ground-truth box."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"})
        for _ in range(7):
            x, y, w, h = rng.uniform(0, 400), rng.uniform(0, 300), rng.uniform(8, 200), rng.uniform(8, 150)
            cat = int(rng.integers(1, 11))
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, w, h],
                 "area": w * h, "iscrowd": 0}
            )  # fmt: skip
            jitter = rng.uniform(-0.1, 0.1, size=4) * [w, h, w, h]
            detections.append(
                {"image_id": i, "category_id": cat, "bbox": list(np.add([x, y, w, h], jitter)), "score": float(rng.uniform())}
            )  # fmt: skip
        for _ in range(dets_per_image - 7):
            x, y, w, h = rng.uniform(0, 400), rng.uniform(0, 300), rng.uniform(8, 200), rng.uniform(8, 150)
            detections.append(
                {"image_id": i, "category_id": int(rng.integers(1, 11)), "bbox": [x, y, w, h], "score": float(rng.uniform())}
            )  # fmt: skip
    gt = {"images": images, "annotations": annotations, "categories": [{"id": c, "name": str(c)} for c in range(1, 11)]}
    return gt, detections


def bench_eval_backends(settings: Settings, num_images: int = 500, dets_per_image: int = 100) -> Dict[str, Figure]:
    """Seconds for the COCO box evaluation of the same files by each backend, timed alternately,
    and for the report's analysis (TIDE, thresholds, confusion, VOC metrics) on them."""
    from resnet_det.evaluation.analysis import explain
    from resnet_det.evaluation.coco import BACKENDS, _quiet_coco, evaluate_coco

    gt, detections = synthetic_coco_eval_case(num_images, dets_per_image)
    coco = _quiet_coco(json.loads(json.dumps(gt)))
    fns = {backend: (lambda b=backend: evaluate_coco(coco, detections, backend=b)) for backend in BACKENDS}
    fns["analysis"] = lambda: explain(coco, detections)
    times = time_alternating(fns, 1 if settings.warmup else 0, settings.runs, torch.device("cpu"))
    figures = {b: Figure("coco_eval_backend", "seconds", times[b], higher_is_better=False) for b in BACKENDS}
    figures["ours"] = Figure("eval_analysis", "seconds", times["analysis"], higher_is_better=False)
    return figures


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}"


def run_benchmarks(settings: Settings, only: List[str], log: Callable[[str], None] = print) -> Dict:
    """Run the chosen measures; returns the JSON-ready result with the ratios ours/stock."""
    torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    result: Dict = {
        "settings": asdict(settings),
        "machine": machine_description(device),
        "date": time.strftime("%Y-%m-%d"),
        "figures": {},
        "ratios": {},
    }
    measures = {
        "inference": lambda: bench_inference(settings, device),
        "train": lambda: bench_training(settings, device),
        "data": lambda: {"ours": bench_data_loading(settings)},
        "eval": lambda: {"ours": bench_coco_eval(settings)},
        "eval-backends": lambda: bench_eval_backends(settings),
    }
    for key in only:
        log(f"measuring {key} ...")
        if key == "data-scale":
            scale = bench_data_scale(settings.scale_images, settings.scale_boxes, settings.scale_polygons, log=log)
            for name, value in scale.items():
                result["figures"][f"data-scale/{name}"] = Figure(name, FIGURE_UNITS[name], [value]).summary()
            continue
        figures = measures[key]()
        for who, fig in figures.items():
            result["figures"][f"{fig.name}/{who}"] = fig.summary()
        if "stock" in figures:
            ours, stock = figures["ours"], figures["stock"]
            result["ratios"][figures["ours"].name] = ours.median / stock.median
            for who, fig in figures.items():
                if who.startswith("ours_"):
                    result["ratios"][f"{fig.name}/{who}"] = fig.median / stock.median
    if "coco_eval_backend/faster-coco-eval" in result["figures"]:
        result["ratios"]["coco_eval_backend"] = (
            result["figures"]["coco_eval_backend/faster-coco-eval"]["median"]
            / result["figures"]["coco_eval_backend/pycocotools"]["median"]
        )
    if "data_loading/ours" in result["figures"] and "train_iteration/ours" in result["figures"]:
        consumed = result["figures"]["train_iteration/ours"]["median"] * settings.train_batch
        result["ratios"]["data_loading_vs_training_consumption"] = (
            result["figures"]["data_loading/ours"]["median"] / consumed
        )
    return result


def format_result(result: Dict) -> str:
    lines = [f"machine: {result['machine']}", f"settings: {json.dumps(result['settings'])}", ""]
    lines.append(f"{'figure':<36}{'unit':<14}{'min':>10}{'median':>10}{'max':>10}{'peak MB':>10}")
    for name, f in result["figures"].items():
        peak = f"{f['peak_memory_mb']:.0f}" if f["peak_memory_mb"] is not None else "-"
        startup = f"   start-up {f['startup_s']:.1f} s" if f.get("startup_s") is not None else ""
        lines.append(
            f"{name:<36}{f['unit']:<14}{f['min']:>10.3f}{f['median']:>10.3f}{f['max']:>10.3f}{peak:>10}{startup}"
        )
    if result["ratios"]:
        lines.append("")
        for name, ratio in result["ratios"].items():
            what = {
                "data_loading_vs_training_consumption": "loader images/s / images/s a training iteration consumes",
                "coco_eval_backend": "faster-coco-eval / pycocotools seconds (medians)",
            }.get(name, "ours / stock (medians)")
            lines.append(f"ratio {name:<40}{ratio:>8.2f}x   {what}")
    return "\n".join(lines)
