"""Annoy (as the build uses it) against faiss HNSW on real embeddings, in one run.

    .venv/bin/pip install -e '.[bench]'            # faiss-cpu, for this benchmark only
    .venv/bin/python -m benchmarks.ann_libraries [--vectors 100000] [--queries 1000]

Vectors are real EfficientNet-Lite0 embeddings (1280-d) of Fashion-MNIST images and their
mirror images (benchmarks/fashion_embeddings.py computes and caches them). Queries are
held out from the indexed set. For each library: build time (one thread, as the build runs
Annoy), then the cheapest query setting whose recall@10 against exact search reaches the
target, and at that setting the one-query-at-a-time latency p50 / p99 (one thread).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.fashion_embeddings import embeddings
from catalog_index import ann

TARGET = 0.95


def exact_top10(database: np.ndarray, queries: np.ndarray) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(database.shape[1])
    flat.add(database)
    return flat.search(queries, 10)[1]


def recall(found: list, exact: np.ndarray) -> float:
    return sum(len(set(f) & set(e)) for f, e in zip(found, exact.tolist())) / exact.size


def latencies(search, queries: np.ndarray) -> np.ndarray:
    times = np.empty(len(queries))
    for n, query in enumerate(queries):
        started = time.perf_counter()
        search(query)
        times[n] = time.perf_counter() - started
    return times * 1000


def annoy_run(database, queries, exact, n_trees):
    started = time.perf_counter()
    index = ann.build_annoy(database, n_trees, seed=42)
    build_seconds = time.perf_counter() - started
    for multiplier in ann.SEARCH_K_MULTIPLIERS + (256, 512):
        search_k = n_trees * 10 * multiplier
        found = [index.get_nns_by_vector(q, 10, search_k=search_k) for q in queries]
        measured = recall(found, exact)
        if measured >= TARGET:
            break
    times = latencies(lambda q: index.get_nns_by_vector(q, 10, search_k=search_k), queries)
    return {"library": f"annoy {n_trees} trees", "build_s": build_seconds,
            "setting": f"search_k={search_k}", "recall": measured,
            "p50_ms": np.percentile(times, 50), "p99_ms": np.percentile(times, 99)}


def hnsw_run(database, queries, exact, m=32, ef_construction=100):
    import faiss

    faiss.omp_set_num_threads(1)
    index = faiss.IndexHNSWFlat(database.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    started = time.perf_counter()
    index.add(database)
    build_seconds = time.perf_counter() - started
    for ef in (16, 32, 64, 128, 256, 512, 1024):
        index.hnsw.efSearch = ef
        measured = recall(index.search(queries, 10)[1].tolist(), exact)
        if measured >= TARGET:
            break
    times = latencies(lambda q: index.search(q[None], 10), queries)
    return {"library": f"faiss HNSW M={m}", "build_s": build_seconds,
            "setting": f"efSearch={ef}", "recall": measured,
            "p50_ms": np.percentile(times, 50), "p99_ms": np.percentile(times, 99)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--trees", type=int, nargs="+", default=[16, 32])
    args = parser.parse_args(argv)

    import faiss

    faiss.omp_set_num_threads(2)
    everything = embeddings(args.vectors + args.queries)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(everything))
    database = np.ascontiguousarray(everything[order[:args.vectors]])
    queries = np.ascontiguousarray(everything[order[args.vectors:args.vectors + args.queries]])
    exact = exact_top10(database, queries)
    print(f"{len(database):,} vectors of {database.shape[1]} dims, {len(queries)} held-out "
          f"queries, recall@10 target {TARGET}")
    results = [annoy_run(database, queries, exact, trees) for trees in args.trees]
    results.append(hnsw_run(database, queries, exact))
    print(f"{'library':<20} {'build s':>8} {'setting':>16} {'recall@10':>10} {'p50 ms':>8} "
          f"{'p99 ms':>8}")
    for r in results:
        print(f"{r['library']:<20} {r['build_s']:8.1f} {r['setting']:>16} {r['recall']:10.3f} "
              f"{r['p50_ms']:8.2f} {r['p99_ms']:8.2f}")


if __name__ == "__main__":
    main()
