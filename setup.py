"""Installs the two packages of resnet-det: `backbones` (the ResNet family) and `resnet_det` (detection).

Dependencies are pinned in requirements.txt (installed by `make venv`); the ranges here only say
what the code needs, so that the package also installs into an existing environment.
"""

from setuptools import find_packages, setup

setup(
    name="resnet-det",
    version="0.1.0",
    description="Faster R-CNN on the residual networks of He et al. (2015): train, fine-tune, evaluate.",
    packages=find_packages(include=["backbones", "backbones.*", "resnet_det", "resnet_det.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy",
        "opencv-python-headless",
        "pycocotools",
        "omegaconf>=2.3",
        "PyYAML",
        "tqdm",
        "tensorboard",
        "matplotlib",
        "defusedxml>=0.7",
        "orjson>=3.9",
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "hypothesis", "tidecv>=1.0,<2", "faster-coco-eval>=1.6,<2"],
        "lint": ["ruff", "mypy"],
        "fast-eval": ["faster-coco-eval>=1.6,<2"],
        # detectron2's pure-Python dependencies; detectron2 itself installs from its repository:
        # pip install 'git+https://github.com/facebookresearch/detectron2.git'
        "detectron2": [
            "fvcore>=0.1.5",
            "iopath>=0.1.7,<0.2",
            "yacs>=0.1.8",
            "tabulate",
            "termcolor>=1.1",
            "cloudpickle",
        ],
        # tools/export.py --format onnx and --model FILE.onnx / --runtime onnxruntime
        "export": ["onnx>=1.16", "onnxruntime>=1.18"],
    },
)
