"""Imports never run upward: the layers a newcomer can rely on.

``domain`` (errors, domain types) is the bottom and imports nothing of ours.
``model_runtime`` (package format, preprocessing, classifier, occlusion)
sits on it, below both ``daemon`` and ``trainer``, and imports neither.
``storage``, ``dicom_io``, ``trainer`` and ``phantoms`` never import ``daemon``. Read from
the source with ``ast``, imports inside functions included. ``phantoms``
(synthetic data and the demo) is test and demo tooling: nothing below the
command line imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("daemon", "dicom_io", "domain", "model_runtime", "phantoms", "storage", "trainer")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _violations(package: str, forbidden: tuple[str, ...]) -> set[tuple[str, str]]:
    return {
        (str(path.relative_to(ROOT)), name)
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in _imports(path)
        if name.split(".")[0] in forbidden
    }


def test_domain_imports_nothing_of_ours() -> None:
    assert _violations("domain", tuple(p for p in OURS if p != "domain")) == set()


def test_the_model_runtime_imports_only_the_domain() -> None:
    forbidden = ("daemon", "dicom_io", "phantoms", "storage", "trainer")
    assert _violations("model_runtime", forbidden) == set()


@pytest.mark.parametrize("package", ["storage", "dicom_io", "trainer", "phantoms"])
def test_lower_layers_never_import_the_daemon(package: str) -> None:
    assert _violations(package, ("daemon",)) == set()


def test_only_the_command_line_uses_the_phantoms() -> None:
    users = {
        path
        for package in ("daemon", "dicom_io", "domain", "model_runtime", "storage", "trainer")
        for path, _name in _violations(package, ("phantoms",))
    }
    assert users == {"daemon/cli/models.py"}
