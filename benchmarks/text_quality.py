"""Captions in the catalog's words, text search and image+text search, measured on real
labelled product images.

    .venv/bin/python -m benchmarks.text_quality [--items 10000] [--tinted 300]

The catalog: the first ``--items`` Fashion-MNIST test images (28x28 PNGs), the title (the
class name) kept on every other item and empty on the rest; plus ``--tinted`` items per
color (red, green, blue): copies of other test images tinted that color, titled with the
class name on every other one. It is built twice with the CLI's defaults, once with
``--caption-method labels`` (ImageNet labels and colors: the captions before issue 14) and
once with ``--caption-method head`` (the default); the ``neighbours`` candidate is fitted
offline on the same sample (models.caption_transfer) from the head build's embeddings.
Printed side by side:

- caption accuracy: the share of untitled items whose caption names their class;
- text P@10 over untitled items, for each class name, singular and plural: the share of
  the first 10 untitled items among the results that have the class;
- image + color P@10: for untinted items used as queries with "red", "green" or "blue",
  the share of the top 10 that have the query's class and that tint.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from models import caption_transfer
from pipelines.demo import FASHION_CLASSES, load_fashion_mnist

COLORS = {"red": (1.0, 0.15, 0.15), "green": (0.15, 1.0, 0.15), "blue": (0.15, 0.15, 1.0)}
PLURALS = {"T-shirt/top": "t-shirts", "Trouser": "trousers", "Pullover": "pullovers",
           "Dress": "dresses", "Coat": "coats", "Sandal": "sandals", "Shirt": "shirts",
           "Sneaker": "sneakers", "Bag": "bags", "Ankle boot": "ankle boots"}
SINGULARS = {"T-shirt/top": "t-shirt", **{c: c.lower() for c in FASHION_CLASSES[1:]}}


def write_catalog(folder: str, items: int, tinted: int, write: bool = True) -> dict:
    """Images and catalog.csv; -> {item_id: (class name, tint or None, titled)}."""
    images, labels = load_fashion_mnist("t10k")
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    truth, rows = {}, []
    for n in range(items):
        item_id = f"fm-{n:05d}"
        path = os.path.join(folder, "images", f"{item_id}.png")
        if write:
            Image.fromarray(images[n]).save(path)
        titled = n % 2 == 0
        name = FASHION_CLASSES[labels[n]]
        rows.append([item_id, path, name if titled else ""])
        truth[item_id] = (name, None, titled)
    source = items
    for color, factors in COLORS.items():
        for n in range(tinted):
            index = (source + n) % len(images)
            item_id = f"fm-{index:05d}-{color}"
            path = os.path.join(folder, "images", f"{item_id}.png")
            gray = images[index].astype(np.float32)
            rgb = np.stack([gray * f for f in factors], axis=-1).round().astype(np.uint8)
            if write:
                Image.fromarray(rgb).save(path)
            titled = n % 2 == 0
            name = FASHION_CLASSES[labels[index]]
            rows.append([item_id, path, name if titled else ""])
            truth[item_id] = (name, color, titled)
        source += tinted
    with open(os.path.join(folder, "catalog.csv"), "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["item_id", "image_uri", "title"])
        writer.writerows(rows)
    return truth


def build(folder: str, method: str, reuse: bool = False) -> str:
    output = os.path.join(folder, f"index-{method}")
    if reuse and os.path.exists(os.path.join(output, "LATEST")):
        return output
    shutil.rmtree(output, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "build", "--catalog",
                           os.path.join(folder, "catalog.csv"), "--output", output,
                           "--version-id", "v1", "--caption-method", method],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"build ({method}) failed: {done.stderr.strip()[-800:]}")
    print(f"built with --caption-method {method} in {time.perf_counter() - started:.0f} s: "
          f"{done.stdout.strip().splitlines()[0]}")
    return output


def read_version(output: str, table: str) -> pa.Table:
    files = sorted(glob.glob(os.path.join(output, "versions", "v1", table, "*.parquet")))
    return pa.concat_tables([pq.read_table(f) for f in files])


def names_class(caption: str, name: str) -> bool:
    return name.lower() in (caption or "").lower()


def caption_accuracy(captions: dict, truth: dict) -> float:
    untitled = [item for item, (_, _, titled) in truth.items() if not titled and item in captions]
    return float(np.mean([names_class(captions[item], truth[item][0]) for item in untitled]))


def neighbour_captions(output: str, truth: dict) -> dict:
    """The neighbours candidate, fitted on the same sample the head build used."""
    metadata = read_version(output, "metadata")
    embeddings = read_version(output, "embeddings")
    vectors = dict(zip(embeddings.column("item_id").to_pylist(),
                       embeddings.column("vector").to_numpy(zero_copy_only=False)))
    rows = metadata.select(["item_id", "title", "colors"]).to_pylist()
    sample = sorted((caption_transfer.sample_key(r["item_id"]), r["item_id"])
                    for r in rows if caption_transfer.item_phrases([r["title"]]))
    sample = sorted(item for _, item in sample[:caption_transfer.MAX_SAMPLE])
    titles = {r["item_id"]: r["title"] for r in rows}
    model = caption_transfer.fit(np.stack([vectors[i] for i in sample]).astype(np.float16),
                                 [caption_transfer.item_phrases([titles[i]]) for i in sample],
                                 method="neighbours")
    untitled = [r for r in rows if not truth[r["item_id"]][2]]
    captions = {}
    for start in range(0, len(untitled), 2000):
        chunk = untitled[start:start + 2000]
        phrases, confidence = model.predict(np.stack([vectors[r["item_id"]] for r in chunk]))
        for row, phrase, sure in zip(chunk, phrases, confidence):
            captions[row["item_id"]] = caption_transfer.caption_text(row["colors"], phrase) \
                if sure >= caption_transfer.MIN_CONFIDENCE else ""
    return captions


def text_precision(index, truth: dict, query: str, name: str, k: int = 10) -> float:
    hits = index.query_text(query, k=len(truth))
    untitled = [hit.item_id for hit in hits if not truth[hit.item_id][2]][:k]
    return sum(truth[item][0] == name for item in untitled) / k


def color_precision(index, truth: dict, queries: int, text_weight: float) -> float:
    plain = [item for item, (_, tint, _) in truth.items() if tint is None]
    rng = np.random.default_rng(0)
    scores = []
    for item in rng.choice(plain, size=queries, replace=False):
        name = truth[item][0]
        for color in COLORS:
            hits = index.query(vector=index.vector(item), text=color, k=10,
                               text_weight=text_weight, exclude=[item])
            scores.append(np.mean([truth[h.item_id][0] == name and truth[h.item_id][1] == color
                                   for h in hits]))
    return float(np.mean(scores))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--tinted", type=int, default=300, help="tinted copies per color")
    parser.add_argument("--color-queries", type=int, default=100)
    parser.add_argument("--text-weight", type=float, default=0.5)
    parser.add_argument("--work", default=None, help="folder to keep (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true",
                        help="measure the versions already built in --work again")
    args = parser.parse_args(argv)

    from search import PublishedIndex

    work = args.work or tempfile.mkdtemp(prefix="text-quality-")
    truth = write_catalog(work, args.items, args.tinted, write=not args.reuse)
    untitled = sum(not titled for _, _, titled in truth.values())
    print(f"{len(truth):,} Fashion-MNIST items ({args.tinted} tinted copies per color), "
          f"{untitled:,} without a title")
    outputs = {method: build(work, method, args.reuse) for method in ("labels", "head")}
    captions = {method: dict(zip(*(read_version(output, "metadata").column(c).to_pylist()
                                   for c in ("item_id", "caption"))))
                for method, output in outputs.items()}
    captions["neighbours"] = neighbour_captions(outputs["head"], truth)

    print("\ncaption names the class (untitled items):")
    for method in ("labels", "neighbours", "head"):
        print(f"  {method:10s} {caption_accuracy(captions[method], truth):.3f}")

    indexes = {method: PublishedIndex.open(output) for method, output in outputs.items()}
    print("\ntext P@10 over untitled items (labels build | head build):")
    totals = {method: [] for method in indexes}
    for name in FASHION_CLASSES:
        cells = []
        for query in (SINGULARS[name], PLURALS[name]):
            values = {method: text_precision(index, truth, query, name)
                      for method, index in indexes.items()}
            for method, value in values.items():
                totals[method].append(value)
            cells.append(f"{query!r:14s} {values['labels']:.2f} | {values['head']:.2f}")
        print("  " + "   ".join(cells))
    print("  mean           " + " | ".join(f"{np.mean(totals[m]):.3f}" for m in indexes))

    print(f"\nimage + color P@10 (same class and tint; {args.color_queries} queries x 3 colors, "
          f"--text-weight {args.text_weight}):")
    for method, index in indexes.items():
        print(f"  {method:10s} "
              f"{color_precision(index, truth, args.color_queries, args.text_weight):.3f}")


if __name__ == "__main__":
    main()
