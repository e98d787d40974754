# Everything a fresh machine needs: `make test` and `make demo` create the virtual environment first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SEED ?= 0
DEMO_DIR ?= output/demo/seed$(SEED)

.PHONY: venv lint test demo clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --config-settings editable_mode=compat -e .
	$(PY) -c "import torchvision; from torchvision.ops import nms"
	touch $(STAMP)

# ruff (lint and format) and mypy, as configured in pyproject.toml.
lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: venv
	$(PY) -m pytest -q --durations=20 tests

clean:
	rm -rf $(VENV) build *.egg-info

# The whole chain on generated data, no download: pretrain a ResNet-18 on shapes classification,
# fine-tune Faster R-CNN R18-FPN from it, evaluate (pycocotools), draw detections. SEED seeds every
# step (`make demo SEED=3`), each seed in its own folder; each step resumes or skips what an earlier
# `make demo` of that seed finished.
DEMO_DET_ARGS ?=
demo: venv
	$(PY) tools/train_cls.py --config configs/classification/shapes.yaml --output $(DEMO_DIR)/cls --seed $(SEED) --resume
	$(PY) tools/train_det.py --config configs/shapes/faster_rcnn_fpn.yaml --weights $(DEMO_DIR)/cls/model_final.pth \
		--output $(DEMO_DIR)/det --seed $(SEED) --resume datasets.test=[] $(DEMO_DET_ARGS)
	$(PY) tools/eval.py --run $(DEMO_DIR)/det --dataset shapes_val --output $(DEMO_DIR)/eval
	$(PY) tools/infer.py --run $(DEMO_DIR)/det --input $${RESNET_DET_DATASETS:-datasets}/shapes/val --max-images 6 \
		--output $(DEMO_DIR)/infer
	@echo "report: $(DEMO_DIR)/eval/report.md, PR curves: $(DEMO_DIR)/eval/pr_curves.png, drawn: $(DEMO_DIR)/infer/"
