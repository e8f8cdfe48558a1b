"""Scale: does the build's memory stay flat as the catalog grows, and does the reader open
and answer fast at a million items?

    .venv/bin/python -m benchmarks.scale build [--sizes 10000,30000,100000]
    .venv/bin/python -m benchmarks.scale reader-1m [--items 1000000] [--per-shard N] [--reuse]
    .venv/bin/python -m benchmarks.scale reader-parts ROOT

``build``: catalogs of real product images (the 70,000 Fashion-MNIST images of the Debian
package ``dataset-fashion-mnist``, saved as 28x28 PNGs; past 70,000, mirrored copies as new
items), one CSV row each with a title and a category. Each is built with default options
by ``catalog-index build`` under ``/usr/bin/time -v``, and this prints wall time, images/s,
peak RSS, and RSS per item; then, against each published version, the reader's open time,
anonymous memory (``RssAnon``: memory-mapped files not counted) and p50/p99 latency of item
and text queries, each measured in a fresh process.

``reader-1m``: a version of 1,000,000 synthetic items (265-d vectors, the build's index
width by default, around 2,000 centres, so that Annoy behaves as on real embeddings;
metadata shaped like the build's) in shards cut as the build cuts them (``--max-shard-mb``:
4 shards), or of ``--per-shard`` items, each shard's search_k tuned for recall@10 0.95 as
the build tunes it; written by the build's own shard and text-index code. Then opened in
a fresh process with an empty reader cache (every file hashed, metadata copied to Arrow),
and ``--runs`` times more with the cache that left (warm): open time, ``RssAnon`` after
open and after the queries, p50/p99 of item and text queries, and (first warm run)
recall@10 of ``query_item`` against exact search over every indexed vector.

``reader-parts``: where an item query's time goes in a version's reader (Annoy searches,
merge, rows), and item queries with the shards on the reader's pool against one thread.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from typing import Optional

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
CLI = [PYTHON, "-m", "pipelines.cli"]  # this checkout's code, run from its root
TEXT_QUERIES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                "sneaker", "bag", "ankle boot")


def write_catalog(folder: str, count: int) -> str:
    """``count`` Fashion-MNIST items (mirrored copies past 70,000) as PNGs and a CSV."""
    from PIL import Image

    from pipelines.demo import FASHION_CLASSES, load_fashion_mnist

    train, train_labels = load_fashion_mnist("train")
    test, test_labels = load_fashion_mnist("t10k")
    images, labels = np.concatenate([train, test]), np.concatenate([train_labels, test_labels])
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    catalog = os.path.join(folder, f"catalog-{count}.csv")
    with open(catalog, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["item_id", "image_uri", "title", "category"])
        for n in range(count):
            source = n % len(images)
            path = os.path.join("images", f"fm-{n:06d}.png")
            if not os.path.exists(os.path.join(folder, path)):
                image = images[source] if n < len(images) else images[source][:, ::-1]
                Image.fromarray(np.ascontiguousarray(image)).save(os.path.join(folder, path))
            category = FASHION_CLASSES[labels[source]]
            writer.writerow([f"fm-{n:06d}", path, f"{category} #{n}", category])
    return catalog


def timed_build(catalog: str, output: str) -> dict:
    """``catalog-index build`` with default options under /usr/bin/time -v."""
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *CLI, "build", "--catalog", catalog,
                           "--output", output], capture_output=True, text=True, cwd=HERE)
    wall = time.perf_counter() - started
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    return {"exit": done.returncode, "wall_s": wall, "peak_rss_bytes": peak_kb * 1024,
            "summary": done.stdout.strip().splitlines()[:1],
            "progress_lines": sum(line.startswith("progress:")
                                  for line in done.stderr.splitlines())}


def measure_reader(root: str, queries: int = 200, recall_queries: int = 0) -> dict:
    """Open ``root``'s LATEST in a fresh process and time item and text queries there (and
    measure query_item's recall@10 over ``recall_queries`` items, after the timings)."""
    done = subprocess.run([PYTHON, "-m", "benchmarks.scale", "reader-probe", root,
                           "--queries", str(queries), "--recall-queries", str(recall_queries)],
                          capture_output=True, text=True, cwd=HERE)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field)).split()[1])


def reader_probe(root: str, queries: int, recall_queries: int = 0) -> dict:
    from search import PublishedIndex

    before = _rss_kb("RssAnon:")
    started = time.perf_counter()
    index = PublishedIndex.open(root, cache_dir=os.path.join(root, ".cache"))
    open_s = time.perf_counter() - started
    anon_after_open = _rss_kb("RssAnon:")
    count = len(index)
    rng = np.random.default_rng(0)
    shard_sizes = [shard.metadata.num_rows for shard in index.shards]
    picks = []
    for _ in range(queries):
        shard = int(rng.integers(len(shard_sizes)))
        if shard_sizes[shard]:
            picks.append(index.shards[shard].metadata.column("item_id")[
                int(rng.integers(shard_sizes[shard]))].as_py())
    item_ms, text_ms = [], []
    for item_id in picks:
        started = time.perf_counter()
        index.query_item(item_id, k=10)
        item_ms.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    index.query_text(TEXT_QUERIES[0], k=10)  # the first text query maps the text index
    text_open_s = time.perf_counter() - started
    for n in range(queries):
        started = time.perf_counter()
        index.query_text(TEXT_QUERIES[n % len(TEXT_QUERIES)], k=10)
        text_ms.append((time.perf_counter() - started) * 1000)
    measured = {"items": count, "shards": len(index.shards),
                "search_k": sorted({shard.search_k for shard in index.shards}),
                "open_s": round(open_s, 3),
                "rss_anon_mb_before_open": before // 1024,
                "rss_anon_mb_after_open": anon_after_open // 1024,
                "rss_anon_mb_after_queries": _rss_kb("RssAnon:") // 1024,
                "rss_mb_after_queries": _rss_kb("VmRSS:") // 1024,
                "item_query_ms_p50": round(float(np.percentile(item_ms, 50)), 3),
                "item_query_ms_p99": round(float(np.percentile(item_ms, 99)), 3),
                "first_text_query_s": round(text_open_s, 3),
                "text_query_ms_p50": round(float(np.percentile(text_ms, 50)), 3),
                "text_query_ms_p99": round(float(np.percentile(text_ms, 99)), 3)}
    if recall_queries:
        measured.update(item_query_recall(index, recall_queries))
    return measured


def item_query_recall(index, queries: int, k: int = 10) -> dict:
    """recall@k of ``query_item`` against exact search over every indexed vector: the exact
    top-k by cosine in the index's space (the Annoy files' vectors), the item itself left
    out, for ``queries`` items spread evenly over the version."""
    from catalog_index import ann

    total = len(index)
    vectors = np.empty((total, index.dimension), dtype=np.float32)
    item_ids, row = [], 0
    for shard in index.shards:
        for annoy_id in range(shard.annoy.get_n_items()):
            vectors[row] = shard.annoy.get_item_vector(annoy_id)
            row += 1
        item_ids.extend(shard.metadata.column("item_id").to_pylist())
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    rows = ann.query_sample(total, queries)
    exact = ann.exact_neighbours(vectors, rows, k, chunk=32)
    found = sum(len({hit.item_id for hit in index.query_item(item_ids[query], k)}
                    & {item_ids[i] for i in truth})
                for query, truth in zip(rows.tolist(), exact.tolist()))
    return {"recall_at_10": round(found / exact.size, 4), "recall_queries": len(rows)}


def reader_parts(root: str, queries: int = 300) -> dict:
    """Where an item query's time goes (p50 ms of each part, timed alone), and the same
    item queries with the shards searched on the reader's pool and on one thread, paired
    (each item both ways, turn about): on a machine whose other processes hold the cores,
    the pool has nothing to gain."""
    from search import PublishedIndex

    index = PublishedIndex.open(root, cache_dir=os.path.join(root, ".cache"))
    rng = np.random.default_rng(1)
    item_ids = []
    for _ in range(queries):
        shard = index.shards[int(rng.integers(len(index.shards)))]
        item_ids.append(shard.item_id(int(rng.integers(shard.metadata.num_rows))))
    vectors = [index.vector(item_id) for item_id in item_ids]
    unit = [(vector / np.linalg.norm(vector)).tolist() for vector in vectors]
    for item_id in item_ids[:50]:
        index.query_item(item_id, 10)

    def p50(call) -> float:
        spent = []
        for n in range(queries):
            started = time.perf_counter()
            call(n)
            spent.append((time.perf_counter() - started) * 1000)
        return round(float(np.percentile(spent, 50)), 3)

    def search_all(n):
        index._each_shard(lambda shard: shard.annoy.get_nns_by_vector(
            unit[n], 11, search_k=shard.search_k, include_distances=True))

    parts = {"shards": len(index.shards), "threads": len(index._groups),
             "query_item": p50(lambda n: index.query_item(item_ids[n], 10)),
             "shards_searched": p50(search_all),
             "one_shard_searched": p50(lambda n: index.shards[0].annoy.get_nns_by_vector(
                 unit[n], 11, search_k=index.shards[0].search_k, include_distances=True)),
             "nearest": p50(lambda n: index._nearest(vectors[n], 10, exclude=[item_ids[n]])),
             "vector": p50(lambda n: index.vector(item_ids[n])),
             "rows_10": p50(lambda n: [index.shards[0].row(row) for row in range(n, n + 10)])}
    pool = (index._groups, index._pool)
    one_thread = ([list(range(len(index.shards)))], None)
    paired = {"pool": [], "one_thread": []}
    for n, item_id in enumerate(item_ids):
        turns = [("pool", pool), ("one_thread", one_thread)]
        if n % 2:
            turns.reverse()
        for name, (groups, executor) in turns:
            index._groups, index._pool = groups, executor
            started = time.perf_counter()
            index.query_item(item_id, 10)
            paired[name].append((time.perf_counter() - started) * 1000)
    index._groups, index._pool = pool
    parts.update({f"paired_{name}_p50": round(float(np.percentile(spent, 50)), 3)
                  for name, spent in paired.items()})
    parts["load_average"] = os.getloadavg()[0]
    return parts


def run_builds(sizes, work: str) -> None:
    rows = []
    for size in sizes:
        catalog = write_catalog(os.path.join(work, "catalog"), size)
        output = os.path.join(work, f"index-{size}")
        subprocess.run(["rm", "-rf", output], check=True)
        build = timed_build(catalog, output)
        reader = measure_reader(output) if build["exit"] == 0 else {}
        rows.append({"items": size, **build, **reader})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| items | exit | wall s | images/s | peak RSS MB | RSS bytes/item | reader open s "
          "| reader RssAnon MB | item query p50/p99 ms | text query p50/p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['items']:,} | {row['exit']} | {row['wall_s']:.0f} | "
              f"{row['items'] / row['wall_s']:.1f} | {row['peak_rss_bytes'] / 2**20:,.0f} | "
              f"{row['peak_rss_bytes'] / row['items']:,.0f} | {row.get('open_s', '-')} | "
              f"{row.get('rss_anon_mb_after_queries', '-')} | "
              f"{row.get('item_query_ms_p50', '-')}/{row.get('item_query_ms_p99', '-')} | "
              f"{row.get('text_query_ms_p50', '-')}/{row.get('text_query_ms_p99', '-')} |")
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        slope = (last["peak_rss_bytes"] - first["peak_rss_bytes"]) / (last["items"] - first["items"])
        print(f"\npeak RSS slope {first['items']:,} -> {last['items']:,} items: "
              f"{slope:,.0f} bytes per item")


SYNTHETIC_DIMENSION = 265  # PCA 256 + LDA 9: the build's index width by default


def write_synthetic_version(root: str, items: int, dimension: int = SYNTHETIC_DIMENSION,
                            per_shard: Optional[int] = None, seed: int = 0,
                            target_recall: float = 0.95, vectors=None) -> None:
    """A published version of ``items`` synthetic items, written by the build's own code:
    shards of ``per_shard`` items (by default cut as the build cuts them: at most
    ``--max-shard-mb`` of index vectors each, 4 shards for a million items at 265-d),
    each shard's search_k tuned for ``target_recall`` as the build tunes it (its
    ``--min-recall`` default). ``vectors(numbers)``: the vectors of the items numbered
    ``numbers`` (by default, around 2,000 random centres)."""
    import hashlib

    import pyarrow.parquet as pq

    from catalog_index import ann
    from catalog_index.schema import LATEST_FILE, MANIFEST_FILE, SCHEMA_VERSION, version_dir
    from catalog_index.storage import sha256_of_file
    from catalog_index.text_index import TEXT_DIR, build_text_index
    from pipelines.demo import FASHION_CLASSES
    from catalog_index.sizing import DEFAULT_MAX_SHARD_MB, shard_count
    from transforms.shard import BuildShard, shard_of, shard_record

    folder = version_dir(root, "synthetic")
    num_shards = max(1, -(-items // per_shard)) if per_shard else \
        shard_count(items, dimension, DEFAULT_MAX_SHARD_MB << 20)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2000, dimension)).astype(np.float32)
    by_shard = [[] for _ in range(num_shards)]
    for n in range(items):
        item_id = f"sku-{n:07d}"
        by_shard[shard_of(item_id, num_shards)].append(n)
    stage = BuildShard(folder, ["category", "title"], dimension, n_trees=16, seed=42,
                       target_recall=target_recall, model_fingerprint="synthetic")
    summaries = []
    for shard, numbers in enumerate(by_shard):
        if vectors is None:
            shard_vectors = centres[np.asarray(numbers, dtype=np.int64) % 2000] + 0.35 * \
                rng.standard_normal((len(numbers), dimension)).astype(np.float32)
        else:
            shard_vectors = np.asarray(vectors(numbers), dtype=np.float32)
        shard_vectors /= np.linalg.norm(shard_vectors, axis=1, keepdims=True)

        def records(numbers=numbers, shard_vectors=shard_vectors):
            for n, vector in zip(numbers, shard_vectors):
                cls = FASHION_CLASSES[n % 10]
                yield shard_record({"item_id": f"sku-{n:07d}",
                       "image_uri": f"gs://shop/images/{n:07d}.jpg",
                       "sha256": hashlib.sha256(str(n).encode()).hexdigest(),
                       "width": 800, "height": 800, "caption": f"gray {cls.lower()}",
                       "labels": [{"label": f"label-{(n + k) % 1000}", "score": 0.1}
                                  for k in range(5)],
                       "colors": [{"name": "gray", "fraction": 0.6}],
                       "passthrough": {"title": f"{cls} #{n}", "category": cls},
                       "embedding": vector})
        summaries.append(stage.build(shard, records(), num_shards))
        del shard_vectors
        print(f"synthetic shard {shard + 1}/{num_shards} written", file=sys.stderr, flush=True)
    tables = (pq.read_table(os.path.join(folder, summary["metadata_file"]),
                            columns=["caption", "category", "title"]) for summary in summaries)
    names = build_text_index(tables, os.path.join(folder, TEXT_DIR))  # a shard at a time
    manifest = {"schema_version": SCHEMA_VERSION, "version_id": "synthetic",
                "model": {"name": "synthetic", "fingerprint": "synthetic",
                          "embedding_dim": dimension},
                "index": {"metric": ann.ANNOY_METRIC, "num_shards": num_shards,
                          "dimension": dimension, "shards": summaries},
                "text_index": {"library": "bm25s", "documents": items, "files": [
                    {"file": f"{TEXT_DIR}/{name}",
                     "sha256": sha256_of_file(os.path.join(folder, TEXT_DIR, name))}
                    for name in names]},
                "counts": {"input": items, "indexed": items}, "pipeline_options": {}}
    with open(os.path.join(folder, MANIFEST_FILE), "w") as stream:
        json.dump(manifest, stream)
    with open(os.path.join(root, LATEST_FILE), "w") as stream:
        stream.write("synthetic\n")


def run_reader_1m(args) -> None:
    """Write the synthetic version (unless --reuse finds one), then open it with an empty
    reader cache (every file hashed, metadata converted) and --runs times more with the
    cache that left (warm), each in a fresh process."""
    if not (args.reuse and os.path.exists(os.path.join(args.work, "LATEST"))):
        subprocess.run(["rm", "-rf", args.work], check=True)
        started = time.perf_counter()
        write_synthetic_version(args.work, args.items, args.dimension, args.per_shard,
                                target_recall=args.target_recall)
        print(f"written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    subprocess.run(["rm", "-rf", os.path.join(args.work, ".cache")], check=True)
    runs = [("first open (empty cache)", measure_reader(args.work, args.queries))]
    for run in range(args.runs):
        runs.append((f"warm {run + 1}", measure_reader(
            args.work, args.queries, args.recall_queries if run == 0 else 0)))
    for name, row in runs:
        print(json.dumps({"run": name, **row}), flush=True)
    print("\n| run | shards | search_k | open s | RssAnon MB after open / queries "
          "| item query p50 / p99 ms | text query p50 / p99 ms | recall@10 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in runs:
        print(f"| {name} | {row['shards']} | {'/'.join(map(str, row['search_k']))} | "
              f"{row['open_s']} | {row['rss_anon_mb_after_open']} / "
              f"{row['rss_anon_mb_after_queries']} | {row['item_query_ms_p50']} / "
              f"{row['item_query_ms_p99']} | {row['text_query_ms_p50']} / "
              f"{row['text_query_ms_p99']} | {row.get('recall_at_10', '-')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build")
    build.add_argument("--sizes", default="10000,30000,100000")
    build.add_argument("--work", default="/tmp/catalog-index-scale")
    million = commands.add_parser("reader-1m")
    million.add_argument("--items", type=int, default=1_000_000)
    million.add_argument("--work", default="/tmp/catalog-index-scale/synthetic")
    million.add_argument("--reuse", action="store_true", help="keep an existing version")
    million.add_argument("--dimension", type=int, default=SYNTHETIC_DIMENSION)
    million.add_argument("--per-shard", type=int, default=None,
                         help="items per shard (default: the build's --max-shard-mb of "
                              "index vectors a shard)")
    million.add_argument("--target-recall", type=float, default=0.95,
                         help="each shard's search_k is tuned for this recall@10 within the "
                              "shard, as the build's --min-recall (0: Annoy's least)")
    million.add_argument("--runs", type=int, default=3, help="warm opens, each measured")
    million.add_argument("--queries", type=int, default=1000)
    million.add_argument("--recall-queries", type=int, default=1000)
    parts = commands.add_parser("reader-parts")
    parts.add_argument("root")
    parts.add_argument("--queries", type=int, default=300)
    probe = commands.add_parser("reader-probe")
    probe.add_argument("root")
    probe.add_argument("--queries", type=int, default=200)
    probe.add_argument("--recall-queries", type=int, default=0)
    args = parser.parse_args()
    if args.command == "build":
        run_builds([int(size) for size in args.sizes.split(",")], args.work)
    elif args.command == "reader-1m":
        run_reader_1m(args)
    elif args.command == "reader-parts":
        print(json.dumps(reader_parts(args.root, args.queries)))
    else:
        print(json.dumps(reader_probe(args.root, args.queries, args.recall_queries)))


if __name__ == "__main__":
    main()
