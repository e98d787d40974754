"""Fixtures shared by the test modules."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
# The real mini datasets beside the project (../shared); CI has them, a user's machine may not.
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: the real COCO/VOC mini datasets live beside the project in CI")
    return SHARED_DATA


# detectron2's pure-Python source beside the project (../shared/vendor); CI has it, and installs its
# Python dependencies from requirements.txt.
DETECTRON2_SOURCE = REPO.parent / "shared" / "vendor" / "detectron2"


@pytest.fixture(scope="session")
def detectron2_path():
    """Put detectron2 on the path (an installed one wins); skip where there is none."""
    import importlib.util
    import sys

    if importlib.util.find_spec("detectron2") is None:
        if not (DETECTRON2_SOURCE / "detectron2").is_dir():
            pytest.skip(f"detectron2 is not installed and {DETECTRON2_SOURCE} is absent")
        sys.path.insert(0, str(DETECTRON2_SOURCE))
    return DETECTRON2_SOURCE


@pytest.fixture(autouse=True)
def records_cache_folder(tmp_path_factory, monkeypatch) -> Path:
    """Each test caches dataset records in a folder of its own, never in the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("records_cache")
    monkeypatch.setenv("RESNET_DET_CACHE", str(folder))
    return folder


@pytest.fixture(autouse=True)
def dataset_registry(monkeypatch):
    """The datasets a test registers (own data, ``datasets.custom``) are forgotten after it, so two
    tests may use the same short name for different files. A module fixture's registration comes
    before this and stays for the session: give it a name of its own."""
    from resnet_det.data import catalog

    monkeypatch.setattr(catalog.DATASETS, "_entries", dict(catalog.DATASETS._entries))
    monkeypatch.setattr(catalog, "_CACHE_SOURCES", dict(catalog._CACHE_SOURCES))
