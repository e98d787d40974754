"""tools/benchmark.py --only eval-backends: both backends timed on the same files, with the ratio."""

import pytest

from resnet_det.engine import benchmark
from resnet_det.evaluation.coco import _quiet_coco, evaluate_coco


def test_both_backends_time_the_same_case_and_agree(monkeypatch):
    pytest.importorskip("faster_coco_eval")
    gt, dets = benchmark.synthetic_coco_eval_case(num_images=6, dets_per_image=20)
    assert len(gt["images"]) == 6 and len(dets) == 6 * 20 and len(gt["annotations"]) == 6 * 7
    coco = _quiet_coco(gt)
    reference = evaluate_coco(coco, dets)["summary"]
    assert 0.05 < reference["AP50"] < 1.0  # the near-box detections hit, the random ones mostly miss
    assert evaluate_coco(coco, dets, backend="faster-coco-eval")["summary"] == pytest.approx(reference, abs=1e-6)

    small = benchmark.bench_eval_backends
    monkeypatch.setattr(benchmark, "bench_eval_backends", lambda s: small(s, num_images=6, dets_per_image=20))
    result = benchmark.run_benchmarks(
        benchmark.Settings(warmup=0, runs=2, threads=1), ["eval-backends"], log=lambda m: None
    )
    figures = result["figures"]
    assert set(figures) == {"coco_eval_backend/pycocotools", "coco_eval_backend/faster-coco-eval", "eval_analysis/ours"}
    assert all(f["runs"] == 2 and f["min"] > 0 for f in figures.values())
    ratio = figures["coco_eval_backend/faster-coco-eval"]["median"] / figures["coco_eval_backend/pycocotools"]["median"]
    assert result["ratios"]["coco_eval_backend"] == pytest.approx(ratio)
    assert "faster-coco-eval / pycocotools seconds" in benchmark.format_result(result)
