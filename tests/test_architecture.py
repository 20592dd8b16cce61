"""The layering rules of docs/architecture.md, checked on the source: building blocks,
backbones and corruptions import no Lightning, corruptions know no datamodule, datamodules
know no method or callback, methods know no datamodule or callback, callbacks need no
evaluation module; and files stay small enough to hold one concern."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "ssl_lightning"
BLOCKS = [
    "layers.py",
    "losses",
    "heads.py",
    "decoders.py",
    "optim.py",
    "momentum.py",
    "distributed.py",
    "files.py",
    "splits.py",
    "export.py",
    "knn.py",
    "collapse.py",
    "labels.py",
]
UPPER = ("ssl_lightning.methods", "ssl_lightning.datamodules", "ssl_lightning.callbacks")


def _sources(*parts: str) -> list[Path]:
    found: list[Path] = []
    for part in parts:
        path = PACKAGE / part
        found += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return found


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _offending(paths: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for path in paths:
        hits = sorted(name for name in _imports(path) if any(name.startswith(f) for f in forbidden))
        if hits:
            bad[str(path.relative_to(PACKAGE))] = hits
    return bad


@pytest.mark.parametrize(
    ("parts", "forbidden"),
    [
        (
            [*BLOCKS, "backbones", "corruptions"],
            ("lightning", "pytorch_lightning", "torchmetrics"),
        ),
        ([*BLOCKS, "backbones", "corruptions"], (*UPPER, "ssl_lightning.evaluation")),
        (
            ["datamodules"],
            ("ssl_lightning.methods", "ssl_lightning.callbacks", "ssl_lightning.evaluation"),
        ),
        (
            ["methods"],
            ("ssl_lightning.datamodules", "ssl_lightning.callbacks", "ssl_lightning.evaluation"),
        ),
        # The monitors need no LinearEvaluation and no torchmetrics (kNN is a building block).
        (["callbacks"], ("ssl_lightning.evaluation", "torchmetrics")),
    ],
    ids=["blocks-no-lightning", "blocks-no-upper-layers", "datamodules", "methods", "callbacks"],
)
def test_layering(parts: list[str], forbidden: tuple[str, ...]) -> None:
    assert _offending(_sources(*parts), forbidden) == {}


def test_only_the_command_line_imports_the_command_line() -> None:
    outside = [p for p in _sources(".") if "cli" not in p.relative_to(PACKAGE).parts]
    assert _offending([p for p in outside if p.name != "__main__.py"], ("ssl_lightning.cli",)) == {}


def test_the_package_root_holds_only_building_blocks() -> None:
    modules = {p.name for p in PACKAGE.glob("*.py")} - {"__init__.py", "__main__.py"}
    assert modules == {b for b in BLOCKS if b.endswith(".py")}


def test_the_package_root_exports_every_method() -> None:
    import ssl_lightning
    from ssl_lightning import methods

    assert set(methods.method_classes()) <= set(ssl_lightning.__all__)


def test_one_concern_per_file() -> None:
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in _sources(".")}
    assert {name: n for name, n in sizes.items() if n > 300} == {}
    assert sizes["methods/base.py"] < 250


def test_importing_the_methods_loads_no_datamodule() -> None:
    """Methods and datamodules stand side by side on the corruptions: importing the methods
    (and the package root) decodes, caches and downloads nothing."""
    code = (
        "import sys, ssl_lightning.methods; "
        "print(sorted(m for m in sys.modules if m.startswith('ssl_lightning.datamodules')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
