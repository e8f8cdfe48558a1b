"""report.html: what a person sees, as static HTML and rendered in a real headless Chromium.

The built page comes from a catalog of real labelled products (Fashion-MNIST) with titles
and categories, a few items without any text (their captions are learned or ImageNet
labels) and two files that are not images. The gate's wording and the number formats are
checked on hand-written manifests, a failing one included.
"""

from __future__ import annotations

import csv
import html
import json
import os
import re
import shlex
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from catalog_index import report_html
from catalog_index.report_html import SampleItem, SampleQuery, render, verdict
from catalog_index.schema import version_dir
from pipelines.build_index import run
from pipelines.demo import FASHION_CLASSES, load_fashion_mnist, next_steps
from search import PublishedIndex
from transforms.report import NEIGHBOURS, SAMPLE_QUERIES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
PER_CLASS, UNTITLED_PER_CLASS = 8, 2  # 60 items with a title and category, 20 with neither


def chromium(tmp_path, *args) -> str:
    result = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                             *args], capture_output=True, text=True, timeout=120)
    return result.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory, model_cache):
    """-> (output root, manifest, report.html path) of a passing version v1."""
    root = tmp_path_factory.mktemp("report")
    images, labels = load_fashion_mnist("t10k")
    rows = []
    for label, name in enumerate(FASHION_CLASSES):
        for rank, index in enumerate(np.flatnonzero(labels == label)[:PER_CLASS]):
            item_id = f"fm-{index:05d}"
            Image.fromarray(images[index]).save(root / f"{item_id}.png")
            titled = rank >= UNTITLED_PER_CLASS
            rows.append([item_id, f"{item_id}.png", f"{name} #{index}" if titled else "",
                         name if titled else ""])
    (root / "bad.png").write_bytes(b"nope")
    (root / "empty.png").write_bytes(b"")
    rows += [["bad", "bad.png", "Broken file", "Bag"], ["empty", "empty.png", "", ""]]
    with open(root / "catalog.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["item_id", "image_uri", "title", "category"])
        writer.writerows(rows)
    output = str(root / "index")
    assert run(["--catalog", str(root / "catalog.csv"), "--output", output,
                "--num-shards", "2", "--version-id", "v1"]) == 0
    folder = version_dir(output, "v1")
    with open(os.path.join(folder, "manifest.json")) as stream:
        manifest = json.load(stream)
    return output, manifest, os.path.join(folder, "report.html")


def text_of(fragment: str) -> str:
    """The visible text of an HTML fragment, whitespace folded."""
    fragment = re.sub(r"<(script|style)>.*?</\1>", " ", fragment, flags=re.S)
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())
    return re.sub(r" ([,;)])", r"\1", text)  # "<b>category</b>," reads "category,"


def shown_items(page: str) -> list:
    """Every sample item on the page, in order: {id, score, title, category, caption}."""
    items = []
    for figure in re.findall(r'<figure class="item[^"]*">(.*?)</figure>', page, re.S):
        def part(css):
            found = re.search(rf'<(?:div|span) class="{css}[^"]*">(.*?)</(?:div|span)>', figure,
                              re.S)
            return text_of(found.group(1)) if found else None
        items.append({"id": part("id"), "score": part("score"), "title": part("title"),
                      "category": part("category"), "caption": part("caption")})
    return items


def test_report_shows_quality_counts_gate_and_errors_by_reason(built):
    _, manifest, path = built
    page = open(path, encoding="utf-8").read()
    quality = manifest["quality"]
    assert manifest["validation"]["passed"] and quality["label_column"] == "category"
    assert re.search(r'validation\s+<span class="badge passed status-passed">passed</span>', page)
    assert "<td>input</td><td>82</td>" in page and "<td>indexed</td><td>80</td>" in page
    text = text_of(page)
    # the quality figures, three decimals each, label P@10 with its column and queries
    assert f"ANN recall@10 {quality['ann_recall_at_10']:.3f} against exact search, " \
           f"{quality['recall_queries']:,} queries; target 0.950" in text
    assert f"label P@10 {quality['label_p_at_10']:.3f} share of the 10 nearest with the same " \
           f"category, {quality['label_queries']:,} queries" in text
    assert "failure rate 2.4% 2 of 82 items; at most 5.0%" in text
    # each check's verdict follows from its value, threshold and passed: no failure wording
    gate = {check["check"]: check for check in manifest["validation"]["gate"]}
    recall = gate["ann_recall_at_10"]["value"]
    assert f"Annoy recall@10 {recall:.3f} reaches the 0.950 target" in text
    assert "2.4% of the input failed, within the 5.0% allowed" in text
    assert "below" not in text and "more than" not in text
    assert "<td>EmptyImageError</td><td>1</td>" in page
    assert "<td>UnsupportedImageError</td><td>1</td>" in page
    # sizes have units; the page fetches nothing from anywhere
    for shard in manifest["index"]["shards"]:
        assert f"<td>{shard['bytes'] / 1024:.1f} KiB</td>" in page
    assert not re.search(r'(?:src|href)="(?!data:)', page) and "url(" not in page


def test_sample_queries_show_titles_categories_and_captions(built):
    output, manifest, path = built
    page = open(path, encoding="utf-8").read()
    items = shown_items(page)
    assert len(items) == SAMPLE_QUERIES * (1 + NEIGHBOURS)
    index = PublishedIndex.open(output, version="v1")
    for start in range(0, len(items), 1 + NEIGHBOURS):
        query, neighbours = items[start], items[start + 1: start + 1 + NEIGHBOURS]
        hits = index.query_item(query["id"], NEIGHBOURS)
        assert [n["id"] for n in neighbours] == [hit.item_id for hit in hits]
        assert [n["score"] for n in neighbours] == [f"{hit.score:.3f}" for hit in hits]
        for shown, row in [(query, index.item(query["id"])),
                           *zip(neighbours, (hit.metadata for hit in hits))]:
            assert shown["title"] == (row["title"] or None)
            assert shown["category"] == (row["category"] or None)
            caption = shown["caption"]
            assert caption.startswith(row["caption"])
            # the catalog's own text goes without a note; a guess says what and how sure
            note = {"catalog": "", "learned": f" (learned from the image, "
                                              f"{row['caption_confidence']:.3f})",
                    "labels": f" (ImageNet labels, {row['caption_confidence']:.3f})"}
            assert caption == row["caption"] + note[row["caption_source"]]
    assert "(catalog" not in page
    # the items with a title are most of what is shown, and some are shown with their title
    assert sum(item["title"] is not None for item in items) >= len(items) // 2


def manifest_for(gate, problems=(), quality=None) -> dict:
    """A hand-written manifest, as validate.py writes them."""
    return {
        "version_id": "20261201", "source": "gs://shop/catalog.parquet",
        "model": {"name": "efficientnet_lite0", "fingerprint": "ab" * 32, "embedding_dim": 1280},
        "index": {"dimension": 256, "shards": [
            {"shard": 0, "items": 612_345, "n_trees": 16, "search_k": 160,
             "recall_at_10": 0.9512, "bytes": 734_003_200}]},
        "counts": {"input": 1_234_567, "indexed": 612_345, "failed": 622_222, "duplicate": 0,
                   "failed_by_stage": {"fetch": 622_222}},
        "quality": quality or {"ann_recall_at_10": 0.912, "recall_queries": 1_000,
                               "failure_rate": 0.504, "previous_version": "20261130",
                               "indexed_change": -0.12},
        "validation": {"passed": not problems, "problems": list(problems), "gate": gate},
        "timings": {"started_at": "2026-12-01T02:00:07+00:00",
                    "validated_at": "2026-12-01T04:03:30+00:00", "seconds": 7403.2},
    }


def test_each_check_shows_the_sentence_the_gate_wrote_for_it():
    """The page shows what transforms/validate.py's gate found, pass or fail, in its words:
    a passing check never reads like a failure."""
    from transforms.validate import quality_gate

    thresholds = {"min_recall": 0.95, "max_failure_rate": 0.05, "max_count_drop": 0.10,
                  "max_precision_drop": 0.02, "allow_model_change": False}
    model = {"fingerprint": "a" * 64, "embedding_dim": 1280}
    previous = {"version_id": "20261130", "indexed": 1000, "model_fingerprint": "a" * 64,
                "embedding_dim": 1280, "quality": {"label_column": "category",
                                                   "label_p_at_10": 0.904}}
    good = {"ann_recall_at_10": 0.996523, "recall_queries": 1064, "failure_rate": 0.0004,
            "indexed_change": 0.02, "ranked_share": 1.0, "rank_queries": 1064,
            "label_column": "category", "label_p_at_10": 0.9}
    bad = {**good, "ann_recall_at_10": 0.912, "failure_rate": 0.504, "indexed_change": -0.12,
           "ranked_share": 0.0, "label_p_at_10": 0.85}
    for quality in (good, bad):
        gate = quality_gate(quality, thresholds, model, previous)
        problems = [check["message"] for check in gate if not check["passed"]]
        text = text_of(render(manifest_for(gate, problems, quality), [], []))
        for check in gate:
            assert check["message"] in text, check
            assert verdict(check) == check["message"]
        if quality is good:
            assert "reaches the 0.950 target" in text and not problems
            assert "below" not in text and "more than" not in text
        else:
            assert "Annoy recall@10 0.912 is below the 0.950 target" in text
            assert "the index space cannot rank" in text


def test_a_failing_version_says_why_and_in_one_number_style():
    gate = [{**dict(check="ann_recall_at_10", value=0.912, threshold=0.95), "passed": False,
             "message": "Annoy recall@10 0.912 is below the 0.950 target (1000 queries)"},
            {**dict(check="failure_rate", value=0.504, threshold=0.05), "passed": False,
             "message": "50.4% of the input failed, more than the 5.0% allowed (see errors/)"},
            {**dict(check="indexed_change", value=-0.12, threshold=-0.1), "passed": False,
             "message": "12.0% fewer items indexed than version 20261130"},
            # a check this page does not know yet still shows its figures and verdict
            {"check": "caption_coverage", "value": 0.81, "threshold": 0.5, "passed": True,
             "message": "..."}]
    problems = [check["message"] for check in gate if not check["passed"]]
    sample = SampleQuery(
        SampleItem("sku-1", "Wool coat", "Coat", "gray coat", "catalog", 1.0, None),
        [SampleItem("sku-2", None, None, "gray coat", "learned", 0.8234, None, 0.91234),
         SampleItem("sku-3", "Parka", "Jacket", "black parka", "labels", 0.4, None, 0.8)])
    page = render(manifest_for(gate, problems), [], [sample])
    text = text_of(page)
    assert '<span class="badge failed status-failed">failed</span>' in page
    assert "Why it failed " + " ".join(problems) in text
    assert "ANN recall@10 ann_recall_at_10 0.912 ≥ 0.950 fail Annoy recall@10 0.912 is below " \
           "the 0.950 target" in text
    assert "failure rate failure_rate 50.4% ≤ 5.0% fail" in text
    assert "indexed items vs the previous version indexed_change -12.0% ≥ -10.0% fail 12.0% " \
           "fewer items indexed" in text
    assert "caption coverage caption_coverage 0.810 0.500 pass ..." in text
    assert "label P@10 n/a the catalog has no label column" in text
    # counts with separators, sizes and times with units, timestamps in UTC
    assert "<td>input</td><td>1,234,567</td>" in page
    assert "<td>failed in fetch</td><td>622,222</td>" in page
    assert "612,345 items indexed in 1 shard from gs://shop/catalog.parquet" in text
    assert "<td>700.0 MiB</td>" in page and "<td>0.951</td>" in page
    assert "<td>build time</td><td>2 h 03 min</td>" in page
    assert "<td>started</td><td>2026-12-01 02:00:07 UTC</td>" in page
    assert "<td>throughput</td><td>82.7 items/s</td>" in page
    # a caption's note only where it tells something
    assert [item["caption"] for item in shown_items(page)] == [
        "gray coat", "gray coat (learned from the image, 0.823)",
        "black parka (ImageNet labels, 0.400)"]
    assert [item["score"] for item in shown_items(page)] == [None, "0.912", "0.800"]
    assert page.count('<div class="missing">no image</div>') == 3


@pytest.mark.parametrize("value, formatted", [
    ((report_html.count, 1234567), "1,234,567"), ((report_html.ratio, 1.0), "1.000"),
    ((report_html.percent, 0.0), "0.0%"), ((report_html.percent, 0.0004), "<0.1%"),
    ((report_html.duration, 38.78), "38.8 s"), ((report_html.duration, 125.4), "2 min 05 s"),
    ((report_html.size, 812), "812 B"), ((report_html.size, 599_248), "585.2 KiB"),
    ((report_html.size, 3 * 1024 ** 3), "3.0 GiB"),
    ((report_html.moment, "2026-12-02T18:35:33+02:00"), "2026-12-02 16:35:33 UTC"),
])
def test_numbers_have_one_style(value, formatted):
    style, number = value
    assert style(number) == formatted


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (make test installs it as root)")
def test_report_in_chromium_fills_a_wide_window_and_folds_in_a_narrow_one(built, tmp_path):
    output, manifest, path = built

    def page_at(width):
        dom = chromium(tmp_path, "--virtual-time-budget=5000", f"--window-size={width},1600",
                       "--dump-dom", f"file://{path}")
        body = re.search(r"<body ([^>]*)>", dom)
        assert body, dom[:500]
        return dom, {name: int(value) for name, value in
                     re.findall(r'data-([a-z-]+)="(\d+)"', body.group(1))}

    dom, wide = page_at(1400)
    assert wide["thumbnails"] == wide["thumbnails-loaded"] == SAMPLE_QUERIES * (1 + NEIGHBOURS)
    assert wide["window-width"] == 1400
    assert wide["samples-width"] >= 0.9 * 1400  # the samples use the window, not a third
    assert wide["cards-per-row"] >= 3
    # what the browser shows: the label P@10 and the sample items' titles
    text = text_of(dom)
    assert f"label P@10 {manifest['quality']['label_p_at_10']:.3f} share of the 10 nearest " \
           f"with the same category" in text
    index = PublishedIndex.open(output, version="v1")
    first = shown_items(dom)[0]["id"]
    assert [item["title"] for item in shown_items(dom)[1:1 + NEIGHBOURS]] == [
        hit.metadata["title"] or None for hit in index.query_item(first, NEIGHBOURS)]

    _, narrow = page_at(700)
    assert narrow["window-width"] == 700 and narrow["samples-width"] <= 700
    assert narrow["cards-per-row"] < wide["cards-per-row"]
    screenshot = tmp_path / "report.png"
    chromium(tmp_path, "--window-size=1400,2400", f"--screenshot={screenshot}", f"file://{path}")
    assert screenshot.stat().st_size > 50_000  # a real picture, not a blank page


def test_the_demo_says_where_the_report_is_and_its_queries_run(built):
    output, manifest, path = built
    catalog = os.path.join(os.path.dirname(output), "catalog.csv")
    with open(catalog, newline="") as stream:
        first = next(row for row in csv.DictReader(stream) if row["category"])
    lines = next_steps(output, catalog, first)
    assert lines[0] == f"report: {path}  (open it in a browser)"
    commands = [shlex.split(line) for line in lines[2:5]]
    serve = shlex.split(lines[6])
    assert lines[5].startswith("serve it") and serve[1:] == ["serve", "--index", output]
    assert [command[command.index("query") + 3] for command in commands] == [
        "--image", "--item-id", "--text"]
    assert commands[2][-1] == first["category"].lower() == "t-shirt/top"
    for command in commands:
        result = subprocess.run(command + ["-k", "1", "--json"], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        (hit,) = json.loads(result.stdout)
        if "--text" in command:
            assert hit["category"] == "T-shirt/top"
        else:  # the first item's own image finds it; by item, it is left out
            assert (hit["item_id"] == first["item_id"]) == ("--image" in command)
