"""Layering, checked on the source: the two front doors never reach into each other, the library
reaches into neither, and only the one map step describes an image for the collection."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> Iterator[Path]:
    yield from sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("api", ("indexer",)), ("retrieval", ("indexer", "api")), ("indexer", ("api",))],
)
def test_packages_do_not_import_the_other_front_door(package: str, forbidden: tuple[str, ...]) -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _modules(package)
        for line, name in _imports(path)
        if name.split(".")[0] in forbidden
    ]
    # `imsearch serve` starts the API by its import string only, never by importing it
    assert not found, "\n".join(found)


#: the steps of the describe recipe: only the map step (and the definitions) may use them
RECIPE = {"image_labels", "annotate", "IndexedImage", "RegionOut"}
ALLOWED = {
    Path("retrieval/ingest/describe.py"),  # THE map step
    Path("retrieval/collection.py"),  # defines IndexedImage and RegionOut, writes them
    Path("retrieval/vision/__init__.py"),  # defines annotate, re-exports image_labels
    Path("retrieval/vision/labels.py"),  # defines image_labels
}


def _recipe_uses(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            if name in RECIPE:
                yield node.lineno, name


def test_only_the_map_step_describes_images() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} calls {name}"
        for package in ("retrieval", "api", "indexer")
        for path in _modules(package)
        if path.relative_to(ROOT) not in ALLOWED
        for line, name in _recipe_uses(path)
    ]
    assert not found, "a second copy of the describe recipe:\n" + "\n".join(found)


def test_outside_code_does_not_reach_into_the_collection() -> None:
    """The Collection owns its database and indexes: no `._db` / `._indexes` outside it."""
    found = []
    for package in ("retrieval", "api", "indexer"):
        for path in _modules(package):
            if path.relative_to(ROOT) == Path("retrieval/collection.py"):
                continue
            for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if "._db." in line or "._indexes" in line or ".db.session(" in line:
                    found.append(f"{path.relative_to(ROOT)}:{line_no}: {line.strip()}")
    assert not found, "\n".join(found)
