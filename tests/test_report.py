"""report.html, rendered in a real headless Chromium: the thumbnails must load."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from catalog_index.schema import version_dir
from pipelines.build_index import run
from tests.real_images import encode, write_files

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def chromium(tmp_path, *args) -> str:
    result = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                             *args], capture_output=True, text=True, timeout=120)
    return result.stdout


@pytest.fixture(scope="module")
def report_page(tmp_path_factory, photos, model_cache):
    root = tmp_path_factory.mktemp("report")
    write_files(str(root / "images"), {f"{n}.jpg": encode(p) for n, p in photos.items()})
    write_files(str(root / "images"), {"bad.jpg": b"nope", "empty.jpg": b""})
    output = str(root / "index")
    assert run(["--catalog", str(root / "images" / "*.jpg"), "--output", output,
                "--num-shards", "2", "--version-id", "v1", "--max-failure-rate", "0.2"]) == 0
    return os.path.join(version_dir(output, "v1"), "report.html")


def test_report_has_counts_gate_and_errors_by_reason(report_page):
    page = open(report_page, encoding="utf-8").read()
    assert re.search(r'validation\s+<span class="status-passed">passed</span>', page)
    assert "<td>input</td><td>22</td>" in page and "<td>indexed</td><td>20</td>" in page
    assert "ann_recall_at_10" in page and "failure_rate" in page
    assert "<td>EmptyImageError</td><td>1</td>" in page
    assert "<td>UnsupportedImageError</td><td>1</td>" in page
    # every sample caption says where it came from and how sure it is (no text: labels)
    sources = re.findall(r"<small>[^<]*\((\w+), (\d\.\d\d)\)</small>", page)
    assert sources and {source for source, _ in sources} == {"labels"}


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (make test installs it as root)")
def test_report_renders_in_chromium_with_every_thumbnail_loaded(report_page, tmp_path):
    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", f"file://{report_page}")
    body = re.search(r'<body data-thumbnails="(\d+)" data-thumbnails-loaded="(\d+)"', dom)
    assert body, dom[:500]
    total, loaded = map(int, body.groups())
    assert total == 6 * 6  # six sample queries, each with its top five
    assert loaded == total
    screenshot = tmp_path / "report.png"
    chromium(tmp_path, "--window-size=1100,1400", f"--screenshot={screenshot}",
             f"file://{report_page}")
    assert screenshot.stat().st_size > 50_000  # a real picture, not a blank page
