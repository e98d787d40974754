"""Imports only go down the layers, including the ones hidden inside functions.

    backbones <- utils <- config <- data, modeling, evaluation <- engine <- integrations <- tools

``utils`` is ``resnet_det.utils`` plus ``resnet_det.errors`` (the error types every layer raises);
``tools`` is ``tools/`` plus ``resnet_det.cli`` (their argument parsing). data, modeling and
evaluation are siblings: none imports another, so each can be read, tested and replaced on its own;
the engine is where they meet. ``integrations`` (bridges to other libraries) sit on the engine.
``backbones`` imports nothing of ``resnet_det``.
"""

import ast
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]

BELOW_MIDDLE = {"backbones", "utils", "config"}
# The exact matrix: a module of the layer on the left may import modules of the layers on the right.
ALLOWED = {
    "backbones": {"backbones"},
    "utils": {"backbones", "utils"},
    "config": {"backbones", "utils", "config"},
    "data": BELOW_MIDDLE | {"data"},
    "modeling": BELOW_MIDDLE | {"modeling"},
    "evaluation": BELOW_MIDDLE | {"evaluation"},
    "engine": BELOW_MIDDLE | {"data", "modeling", "evaluation", "engine"},
    "integrations": BELOW_MIDDLE | {"data", "modeling", "evaluation", "engine", "integrations"},
    "tools": BELOW_MIDDLE | {"data", "modeling", "evaluation", "engine", "integrations", "tools"},
}


def layer_of(module: str) -> Optional[str]:
    """The layer of a dotted module name of this project; None for anything else (torch, json)."""
    parts = module.split(".")
    if parts[0] in ("backbones", "tools"):
        return parts[0]
    if parts[0] != "resnet_det":
        return None
    if len(parts) == 1 or parts[1] in ("utils", "errors"):
        return "utils"
    if parts[1] == "cli":
        return "tools"
    if parts[1] in ALLOWED:
        return parts[1]
    return "unassigned"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> Iterator[Tuple[int, str]]:
    """``(line, module)`` for every import anywhere in ``source``: top level, in functions, in
    ``if TYPE_CHECKING`` blocks; relative imports resolved against ``module``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield node.lineno, base
            # `from resnet_det import errors` imports the module resnet_det.errors.
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if base else alias.name


def violations(source: str, module: str, is_package: bool = False) -> List[str]:
    here = layer_of(module)
    found = {}
    for line, target in imported_modules(source, module, is_package):
        there = layer_of(target)
        if there is None or there == "unassigned" and layer_of(target.rsplit(".", 1)[0]) != "unassigned":
            continue  # not ours, or `from pkg import name` where name is a function, not a module
        if there not in ALLOWED[here]:
            found.setdefault(line, f"{module}:{line} ({here}) imports {target} ({there})")
    return list(found.values())


def project_modules() -> List[Path]:
    return sorted(p for folder in ("backbones", "resnet_det", "tools") for p in (REPO / folder).rglob("*.py"))


def test_every_module_has_a_layer():
    unassigned = [module_name(p) for p in project_modules() if layer_of(module_name(p)) == "unassigned"]
    assert not unassigned, f"add these to a layer in tests/test_import_layers.py: {unassigned}"


def test_no_import_climbs_the_layers():
    found = []
    for path in project_modules():
        found += violations(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
    assert not found, "imports that climb the layers:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "module, source",
    [
        ("resnet_det.config", "def save():\n    from resnet_det.engine.checkpoint import atomic_write_text\n"),
        ("resnet_det.evaluation.report", "import resnet_det.engine.distributed\n"),
        ("resnet_det.modeling.detector", "from resnet_det.data import build\n"),
        ("resnet_det.utils.comm", "if True:\n    from resnet_det import config\n"),
        ("backbones.weights", "def f():\n    from resnet_det.errors import ConfigError\n"),
        ("backbones.weights", "from .. import resnet_det\n"),
    ],
    ids=["hidden-in-function", "plain-import", "sibling", "from-package", "backbones-hidden", "relative"],
)
def test_an_upward_import_is_caught_wherever_it_hides(module, source):
    assert violations(source, module)


def test_downward_and_foreign_imports_pass():
    source = (
        "import torch\nfrom resnet_det.utils.file_io import read_json\nfrom resnet_det.errors import ConfigError\n"
        "from backbones import build_backbone\nfrom resnet_det.config import load_config\n"
        "def f():\n    from resnet_det.evaluation.coco import STAT_NAMES\n"
    )
    assert violations(source, "resnet_det.evaluation.report") == []
    assert violations("from .errors import BackboneError\n", "backbones.weights") == []
