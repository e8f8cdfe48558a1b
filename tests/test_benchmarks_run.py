"""Every benchmark still runs after the code under it moves: each one's command line
answers ``--help``, and every name a benchmark imports from the project exists where it
imports it from (benchmarks import lazily, inside functions, so a renamed module or
function would otherwise surface only when someone runs the benchmark for hours)."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(REPO, "benchmarks")
PROJECT = ("catalog_index", "models", "search", "serve", "transforms", "runners", "pipelines",
           "benchmarks", "tests")
BENCHMARKS = sorted(name[:-3] for name in os.listdir(FOLDER)
                    if name.endswith(".py") and name != "__init__.py")


def project_imports(path: str):
    """(module, name) for every ``from <project module> import name`` in the file,
    wherever it is (module level or inside a function)."""
    with open(path) as stream:
        tree = ast.parse(stream.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in PROJECT:
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PROJECT:
                    yield alias.name, None


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_name_a_benchmark_imports_exists(name):
    missing = []
    for module_name, attribute in project_imports(os.path.join(FOLDER, f"{name}.py")):
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            missing.append(f"{module_name}: {error}")
            continue
        if attribute is not None and attribute != "*" and not hasattr(module, attribute):
            try:  # a submodule imported by name
                importlib.import_module(f"{module_name}.{attribute}")
            except ImportError:
                missing.append(f"{module_name}.{attribute}")
    assert not missing, f"benchmarks/{name}.py imports what is not there: {missing}"


def test_every_benchmark_answers_help():
    failed = {}
    for name in BENCHMARKS:
        done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--help"],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        if done.returncode != 0:
            failed[name] = done.stderr.strip().splitlines()[-1:] or done.returncode
    assert not failed, failed
