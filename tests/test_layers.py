"""docs/architecture.md's import rules, checked on the code: which package may import which,
and which packages stay free of Beam and of TensorFlow at import time."""

from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("catalog_index", "models", "search", "serve", "transforms", "runners", "pipelines")
# package -> the project packages its modules may import (itself always)
MAY_IMPORT = {
    "catalog_index": set(),
    "models": {"catalog_index"},
    "search": {"catalog_index", "models"},
    # the HTTP layer over the reader: it answers with search/, nothing else
    "serve": {"catalog_index", "models", "search"},
    # the Report stage opens the new version through the reader, as search teams will
    "transforms": {"catalog_index", "models", "search"},
    "runners": {"catalog_index"},
    "pipelines": {"catalog_index", "models", "search", "serve", "transforms", "runners"},
}
BEAM_FREE = ("catalog_index", "models", "search", "serve")


def imports(path: str):
    """(module imported, whether at module level) for every import of a file."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module, id(node) in top


def modules():
    for package in PACKAGES:
        for name in sorted(os.listdir(os.path.join(REPO, package))):
            if name.endswith(".py"):
                yield package, os.path.join(REPO, package, name)


@pytest.mark.parametrize("package, path", list(modules()),
                         ids=lambda value: os.path.relpath(value, REPO) if "/" in str(value)
                         else value)
def test_a_module_imports_only_the_packages_its_layer_may(package, path):
    allowed = MAY_IMPORT[package] | {package}
    for module, _top_level in imports(path):
        root = module.split(".")[0]
        if root in PACKAGES:
            assert root in allowed, f"{os.path.relpath(path, REPO)} imports {module}"
        if package in BEAM_FREE:
            assert root != "apache_beam", f"{os.path.relpath(path, REPO)} imports Beam"


def test_the_rules_catch_a_module_that_breaks_them(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import apache_beam\nfrom pipelines.plan import BuildPlan\n")
    found = [module for module, _ in imports(str(bad))]
    assert found == ["apache_beam", "pipelines.plan"]
    assert "pipelines" not in MAY_IMPORT["search"] and "search" in BEAM_FREE
