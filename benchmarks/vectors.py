"""Vectors that fit the catalog (issue 19): retrieval quality, index size and query time of
the raw model vectors against projections learned from the catalog, measured in one run.

    .venv/bin/python -m benchmarks.vectors [--items 20000] [--work DIR]

The catalog: ``--items`` Fashion-MNIST images (the training set, 28x28 PNGs), a ``category``
on every other item and no titles. The items WITHOUT a category are the queries: their
category is hidden from the build, and what counts is how many of their 10 nearest other
items have their true class (leave-one-out P@10).

1. One build with ``--dims 0`` (the model's raw 1,280-d vectors). From its embeddings
   Parquet (the model's own vectors, whatever the index holds), each projection variant is
   fitted exactly as the build fits it (models/projection.py, on the first 20,000 items by
   hash, with the category where there is one) and P@10 is computed by exact cosine search.
2. Builds with default options (``--dims 256``: PCA 256 + LDA from the category), with
   ``--dims N`` for other variants worth it, and with default options from the same images
   in a catalog with no category column (PCA only): Annoy bytes per item, ``query_item``
   p50 and P@10 through ``PublishedIndex.query_item`` (Annoy, tuned search_k). Each is
   built on the one before in the same output root: its images' vectors are reused, and its
   projection is fitted anew (its settings differ from the published version's). The
   manifest says so (``projection.origin``); the benchmark checks it.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from catalog_index import versions
from models.vectors import unit_length
import pyarrow.parquet as pq

PYTHON = sys.executable
ROUND = 100  # queries a version answers in a row before the next version's turn
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_catalog(work: str, items: int, with_category: bool = True):
    """-> (catalog path, {item_id: true class}); ``with_category`` False: the catalog has
    no category column at all."""
    from PIL import Image

    from pipelines.demo import FASHION_CLASSES, load_fashion_mnist

    images, labels = load_fashion_mnist("train")
    folder = os.path.join(work, "images")
    os.makedirs(folder, exist_ok=True)
    truth = {}
    path = os.path.join(work, "catalog.csv" if with_category else "catalog-no-category.csv")
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["item_id", "image_uri", "category"][:3 if with_category else 2])
        for n in range(items):
            item_id, image = f"fm-{n:06d}", os.path.join(folder, f"fm-{n:06d}.png")
            if not os.path.exists(image):
                Image.fromarray(images[n % len(images)]).save(image)
            truth[item_id] = FASHION_CLASSES[labels[n % len(images)]]
            writer.writerow([item_id, image, truth[item_id] if n % 2 == 0 else ""]
                            [:3 if with_category else 2])
    return path, truth


def build(catalog: str, output: str, version: str, *extra: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([PYTHON, "-m", "pipelines.cli", "build", "--catalog", catalog,
                           "--output", output, "--version-id", version, *extra],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"build {version} failed: {done.stderr.strip()[-800:]}")
    return time.perf_counter() - started


def read_embeddings(version_dir: str):
    """-> (item_ids, float32 vectors [n, d], categories as the catalog gave them)."""
    ids, vectors, categories = [], [], {}
    for name in sorted(os.listdir(os.path.join(version_dir, "embeddings"))):
        table = pq.read_table(os.path.join(version_dir, "embeddings", name),
                              columns=["item_id", "vector"])
        ids += table.column("item_id").to_pylist()
        flat = table.column("vector").combine_chunks().flatten().to_numpy()
        vectors.append(flat.reshape(table.num_rows, -1).astype(np.float32))
    for name in sorted(os.listdir(os.path.join(version_dir, "metadata"))):
        table = pq.read_table(os.path.join(version_dir, "metadata", name),
                              columns=["item_id", "category"])
        categories.update(zip(table.column("item_id").to_pylist(),
                              table.column("category").to_pylist()))
    return ids, np.concatenate(vectors), [categories[i] or None for i in ids]


def precision_at_10(vectors: np.ndarray, classes: np.ndarray, queries: np.ndarray) -> float:
    """Leave-one-out P@10 by exact cosine search, for the rows ``queries``."""
    unit = unit_length(vectors)
    hits = 0
    for start in range(0, len(queries), 1024):
        rows = queries[start:start + 1024]
        scores = unit[rows] @ unit.T
        scores[np.arange(len(rows)), rows] = -np.inf
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        hits += int((classes[top] == classes[rows][:, None]).sum())
    return hits / (10 * len(queries))


def offline_table(ids, vectors, categories, truth) -> list:
    from models import caption_transfer, projection
    from transforms.projection import MAX_SAMPLE

    classes = np.array([truth[i] for i in ids])
    queries = np.array([n for n, category in enumerate(categories) if category is None])
    order = sorted(range(len(ids)), key=lambda n: caption_transfer.sample_key(ids[n]))
    sample = sorted(order[:MAX_SAMPLE], key=lambda n: ids[n])  # as the build samples
    sample_vectors = vectors[sample].astype(np.float16)  # the sample travels as float16
    sample_labels = [categories[n] for n in sample]
    rows = [("raw 1280-d", 5120, precision_at_10(vectors, classes, queries))]
    for dims in (64, 128, 256):
        pca = projection.fit(sample_vectors, dims)
        rows.append((f"PCA {dims}", 4 * dims,
                     precision_at_10(pca.apply(vectors), classes, queries)))
        both = projection.fit(sample_vectors, dims, sample_labels, "category")
        rows.append((f"PCA {dims} + LDA {both.lda.shape[1]}", 4 * both.dims,
                     precision_at_10(both.apply(vectors), classes, queries)))
    return rows


def through_the_reader(output: str, versions, truth: dict, queries: int = 1000) -> dict:
    """-> {version: (Annoy bytes per item, query_item p50 in ms, P@10 of the first
    ``queries`` uncategorized items through PublishedIndex.query_item)}. The versions take
    turns, ROUND queries at a time, so that whatever else runs on the machine slows them
    alike, while each round runs with its own index in the CPU's caches, as a search server
    that serves one version does (query by query turns measured raw/256 at 0.53 where
    rounds of 1,000 gave 0.35)."""
    from search.index import PublishedIndex

    indexes = {version: PublishedIndex.open(output, version=version) for version in versions}
    asked = [i for i in sorted(next(iter(indexes.values())).item_ids())
             if int(i[3:]) % 2 == 1][:queries]
    times = {version: [] for version in versions}
    hits = dict.fromkeys(versions, 0)
    for start in range(0, len(asked), ROUND):
        for version, index in indexes.items():
            for item_id in asked[start:start + ROUND]:
                started = time.perf_counter()
                found = index.query_item(item_id, k=10)
                times[version].append(time.perf_counter() - started)
                hits[version] += sum(truth[hit.item_id] == truth[item_id] for hit in found)
    result = {}
    for version, index in indexes.items():
        shards = index.manifest["index"]["shards"]
        per_item = sum(shard["bytes"] for shard in shards) / sum(shard["items"] for shard in shards)
        result[version] = (per_item, 1000 * statistics.median(times[version]),
                           hits[version] / (10 * len(asked)))
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dims", type=int, nargs="*", default=[],
                        help="more --dims N builds beside the default's")
    parser.add_argument("--work", default=None)
    args = parser.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="vectors-")
    sys.path.insert(0, ROOT)
    try:
        catalog, truth = write_catalog(work, args.items)
        output = os.path.join(work, "index")
        shutil.rmtree(output, ignore_errors=True)
        walls = {"raw": build(catalog, output, "raw", "--dims", "0")}
        ids, vectors, categories = read_embeddings(os.path.join(output, "versions", "raw"))
        print(f"{len(ids):,} Fashion-MNIST items, a category on every other one; queries: "
              f"the {sum(c is None for c in categories):,} without (leave-one-out P@10)")
        print("exact search, each projection fitted as the build fits it:")
        for name, size, precision in offline_table(ids, vectors, categories, truth):
            print(f"  {name:22s} {size:5d} bytes/vector  P@10 {precision:.3f}")
        walls["default"] = build(catalog, output, "default")
        for dims in args.dims:
            walls[f"dims-{dims}"] = build(catalog, output, f"dims-{dims}", "--dims", str(dims))
        unlabelled, _ = write_catalog(work, args.items, with_category=False)
        walls["no-category"] = build(unlabelled, output, "no-category")
        print("built and queried (Annoy, tuned search_k; 1,000 uncategorized items; "
              "no-category: the same images, a catalog with no category column, default "
              "options):")
        measured = through_the_reader(output, list(walls), truth)
        for version, wall in walls.items():
            entry = versions.read_manifest(output, version)["projection"]
            assert entry is None or entry["origin"] == {"fitted": "sample"}, entry
            per_item, p50, precision = measured[version]
            print(f"  {version:11s} build {wall:6.1f} s  Annoy {per_item:7.0f} bytes/item  "
                  f"query_item p50 {p50:6.2f} ms ({p50 / measured['raw'][1]:.2f} of raw)  "
                  f"P@10 {precision:.3f}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
