"""Captions in the catalog's own words, the text analyzer, and image + text queries, on real
images: Fashion-MNIST products (half of them titled) and real photos with tinted copies."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from catalog_index.schema import version_dir
from catalog_index.text_index import analyze
from pipelines.build_index import run as build
from pipelines.demo import FASHION_CLASSES, load_fashion_mnist
from search import PublishedIndex
from search.cli import run as query
from tests.real_images import encode, write_files

PER_CLASS, TITLED_PER_CLASS = 16, 10  # 100 titled items, 60 without a title


def metadata_rows(output, version):
    folder = os.path.join(version_dir(output, version), "metadata")
    return {row["item_id"]: row for name in sorted(os.listdir(folder))
            for row in pq.read_table(os.path.join(folder, name)).to_pylist()}


@pytest.fixture(scope="module")
def fashion(tmp_path_factory, model_cache):
    """-> (output root, {item_id: (class name, titled)}), built twice (v1, v2)."""
    root = tmp_path_factory.mktemp("fashion")
    images, labels = load_fashion_mnist("t10k")
    truth, rows = {}, []
    for label, name in enumerate(FASHION_CLASSES):
        for rank, index in enumerate(np.flatnonzero(labels == label)[:PER_CLASS]):
            item_id = f"fm-{index:05d}"
            path = root / f"{item_id}.png"
            Image.fromarray(images[index]).save(path)
            titled = rank < TITLED_PER_CLASS
            rows.append([item_id, str(path), name if titled else ""])
            truth[item_id] = (name, titled)
    with open(root / "catalog.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["item_id", "image_uri", "title"])
        writer.writerows(rows)
    output = str(root / "out")
    for version in ("v1", "v2"):
        assert build(["--catalog", str(root / "catalog.csv"), "--output", output,
                      "--version-id", version, "--num-shards", "2"]) == 0
    return output, truth


def test_untitled_items_are_captioned_in_the_catalogs_words(fashion):
    output, truth = fashion
    rows = metadata_rows(output, "v1")
    untitled = [item for item, (_, titled) in truth.items() if not titled]
    learned = [item for item in untitled if rows[item]["caption_source"] == "learned"]
    assert len(learned) >= 0.8 * len(untitled)
    named = [truth[item][0].lower() in rows[item]["caption"] for item in untitled]
    assert np.mean(named) >= 0.7, np.mean(named)  # ImageNet labels name ~3% of them
    for item in learned:
        assert 0.25 <= rows[item]["caption_confidence"] <= 1.0
        assert rows[item]["caption"].split()[-1] in {
            word for name in FASHION_CLASSES for word in name.lower().split()}


def test_titles_pass_through_unchanged_and_caption_their_items(fashion):
    output, truth = fashion
    rows = metadata_rows(output, "v1")
    for item, (name, titled) in truth.items():
        assert (rows[item]["title"] or "") == (name if titled else "")
        if titled:
            assert rows[item]["caption_source"] == "catalog"
            assert rows[item]["caption"].endswith(name.lower())
            assert rows[item]["caption_confidence"] == 1.0


def test_captions_are_deterministic(fashion):
    output, _ = fashion
    first, second = metadata_rows(output, "v1"), metadata_rows(output, "v2")
    assert first == second
    files = [sorted(os.listdir(os.path.join(version_dir(output, v), "metadata")))
             for v in ("v1", "v2")]
    for a, b in zip(*files):
        assert open(os.path.join(version_dir(output, "v1"), "metadata", a), "rb").read() == \
            open(os.path.join(version_dir(output, "v2"), "metadata", b), "rb").read()


@pytest.mark.parametrize("words, name", [
    ("trousers", "Trouser"), ("t-shirts", "T-shirt/top"), ("T-Shirt", "T-shirt/top"),
    ("ankle boots", "Ankle boot"), ("dresses", "Dress"), ("sneakers", "Sneaker")])
def test_text_queries_find_singular_titles_from_plurals_and_hyphens(fashion, words, name):
    output, truth = fashion
    hits = PublishedIndex.open(output, "v1").query_text(words, k=TITLED_PER_CLASS)
    assert len(hits) == TITLED_PER_CLASS
    assert all(truth[hit.item_id][0] == name for hit in hits), [h.item_id for h in hits]


def test_untitled_items_are_found_by_text_through_their_captions(fashion):
    output, truth = fashion
    index = PublishedIndex.open(output, "v1")
    hits = index.query_text("trousers", k=PER_CLASS)
    untitled = [hit for hit in hits if not truth[hit.item_id][1]]
    assert untitled and all(truth[hit.item_id][0] == "Trouser" for hit in untitled)


def test_the_analyzer_folds_hyphens_case_accents_and_plurals():
    assert analyze("T-shirt/top") == ["tshirt", "top"]
    assert analyze("t-shirts") == ["tshirt"]
    assert analyze("Trousers") == analyze("trouser") == ["trouser"]
    assert analyze("Café  CRÈME") == ["cafe", "creme"]
    assert analyze("the shirt") == ["shirt"]


def _tinted(photo: np.ndarray, color: str) -> np.ndarray:
    gray = photo.astype(np.float32).mean(axis=2, keepdims=True)
    strong = 0.6 * 255 + 0.4 * gray  # bright: a named color, not brown or navy
    channels = {"red": (strong, 0.1 * gray, 0.1 * gray), "blue": (0.1 * gray, 0.1 * gray, strong)}
    return np.concatenate(channels[color], axis=2).round().astype(np.uint8)


@pytest.fixture(scope="module")
def tinted_photos(tmp_path_factory, photos, model_cache):
    """Real photos without any text column, and red and blue copies of the cat."""
    root = tmp_path_factory.mktemp("tinted")
    files = {f"{name}.jpg": encode(photos[name]) for name in ("coffee", "chelsea", "rocket")}
    files.update({f"chelsea-{color}.jpg": encode(_tinted(photos["chelsea"], color))
                  for color in ("red", "blue")})
    paths = write_files(str(root / "img"), files)
    with open(root / "catalog.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["item_id", "image_uri"])
        writer.writerows([name[:-4], path] for name, path in sorted(paths.items()))
    output = str(root / "out")
    assert build(["--catalog", str(root / "catalog.csv"), "--output", output]) == 0
    return output, paths


def test_a_catalog_without_text_keeps_label_and_color_captions(tinted_photos):
    output, _ = tinted_photos
    rows = metadata_rows(output, open(os.path.join(output, "LATEST")).read().strip())
    assert {row["caption_source"] for row in rows.values()} == {"labels"}
    assert "espresso" in rows["coffee"]["caption"]
    assert "blue" in rows["chelsea-blue"]["caption"] and "red" in rows["chelsea-red"]["caption"]


@pytest.mark.parametrize("color", ["red", "blue"])
def test_image_and_color_word_rank_the_copy_of_that_color_first(tinted_photos, color, capsys):
    output, paths = tinted_photos
    index = PublishedIndex.open(output)
    image = open(paths["chelsea.jpg"], "rb").read()
    assert index.query(image=image, text=color, k=3)[0].item_id == f"chelsea-{color}"
    assert index.query(image=image, k=1)[0].item_id == "chelsea"  # the image alone
    assert query(["--index", output, "--image", paths["chelsea.jpg"], "--text", color,
                  "-k", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["item_id"] == f"chelsea-{color}"


def test_labels_that_share_a_name_are_one_label_with_their_probabilities_added():
    from models.captioner import LabelColorCaptioner

    names = ["tabby cat", "missile", "tabby cat", "rocket", "missile", "kite"]
    probabilities = np.array([0.30, 0.25, 0.20, 0.15, 0.06, 0.04])
    labels = LabelColorCaptioner(class_names=names, top_k=3)._labels(probabilities)
    assert labels == [("tabby cat", 0.5), ("missile", 0.31), ("rocket", 0.15)]
