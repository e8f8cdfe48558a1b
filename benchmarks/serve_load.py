"""``catalog-index serve`` under load, and its memory with one and two workers.

    .venv/bin/python -m benchmarks.serve_load load [--index out] [--workers 2] [--clients 16]
        [--seconds 60] [--library-seconds 20] [--work /tmp/catalog-index-serve-load]
    .venv/bin/python -m benchmarks.serve_load memory ROOT [ROOT ...] [--queries 600]

``load``: a copy of the version ``--index`` publishes (``make demo``'s ./out by default)
and two more versions of the same catalog with 100 and 200 more products, built first
(``catalog-index build``, incremental) and published during the run by rewriting LATEST
(``catalog-index rollback``, what the build's Publish step does last): at a quarter of the
run the second version, at half the third, at three quarters LATEST is rolled back to the
second. ``--clients`` clients (threads in two processes) send a fixed mix of queries for
``--seconds`` over loopback, each waiting for its answer before the next: 40% more like
this (by item), 40% by text, 20% by an uploaded image (Fashion-MNIST test images that are
not in the catalog). Then the same mix on the same versions through the library
(``PublishedIndex``) in-process, as many threads, in one process and in as many processes
as the server has workers. Prints requests per second, p50 and p99 per query type, failed
requests (an error, a status other than 200, or an answer from a version never published)
and whether every client saw the versions in publication order.

``memory``: for each ROOT, a server with one worker, then with two, each sent the same
queries (item, text and, where the version has a query model, image), then the PSS of
every process of the server (``/proc/PID/smaps_rollup``: pages shared by n processes count
1/n in each), summed.

Everything talks to 127.0.0.1 only, and every loop ends by itself at its deadline.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Dict, List

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

from tests.serve_client import Client, ServerProcess  # noqa: E402

KINDS = ("item", "text", "image")
MIX = ("item", "text", "item", "text", "image")  # 40% item, 40% text, 20% image
TEXTS = ("ankle boot", "dress", "bag", "sneaker", "gray pullover", "white t-shirt",
         "trouser", "coat", "sandal", "shirt")


# --- what is queried ---------------------------------------------------------------------

def query_images(count: int = 16, first: int = 5000) -> List[bytes]:
    """PNGs of Fashion-MNIST test images past those the demo's catalog holds."""
    from PIL import Image

    from pipelines.demo import load_fashion_mnist

    images, _ = load_fashion_mnist()
    encoded = []
    for image in images[first:first + count]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    return encoded


def item_ids(root: str, cache_dir: str, count: int = 2000) -> List[str]:
    from search import PublishedIndex

    index = PublishedIndex.open(root, cache_dir=cache_dir)
    try:
        ids = [item for _, item in zip(range(count), index.item_ids())]
        return ids
    finally:
        index.close()


def summary(latencies: Dict[str, List[float]]) -> dict:
    return {kind: {"count": len(values),
                   "p50_ms": round(float(np.percentile(values, 50)) * 1000, 2) if values else None,
                   "p99_ms": round(float(np.percentile(values, 99)) * 1000, 2) if values else None}
            for kind, values in latencies.items()}


# --- the library, in-process ---------------------------------------------------------------

def library_process(root, cache_dir, threads, seconds, ids, images, results):
    from search import PublishedIndex

    index = PublishedIndex.open(root, cache_dir=cache_dir)
    index.model()
    latencies = {kind: [] for kind in KINDS}
    barrier = threading.Barrier(threads)

    def worker(number):
        barrier.wait()
        deadline = time.perf_counter() + seconds
        n = number
        while time.perf_counter() < deadline:
            kind = MIX[n % len(MIX)]
            started = time.perf_counter()
            if kind == "item":
                index.query_item(ids[n % len(ids)], 10)
            elif kind == "text":
                index.query_text(TEXTS[n % len(TEXTS)], 10)
            else:
                index.query_image(images[n % len(images)], 10)
            latencies[kind].append(time.perf_counter() - started)
            n += 7

    results.put({"latencies": latencies, "cpu_s": run_threads(worker, threads)})


def run_threads(worker, threads: int) -> float:
    """``worker(n)`` on ``threads`` threads, n = 0, 1, ...; -> this process's CPU seconds
    while they ran."""
    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    cpu = time.process_time()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return time.process_time() - cpu


def run_library(root, cache_dir, clients, processes, seconds, ids, images) -> dict:
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    started = time.perf_counter()
    pool = [context.Process(target=library_process, args=(
        root, cache_dir, clients // processes, seconds, ids, images, results))
        for _ in range(processes)]
    for process in pool:
        process.start()
    parts = [results.get(timeout=seconds + 300) for _ in pool]
    for process in pool:
        process.join()
    latencies = {kind: [v for part in parts for v in part["latencies"][kind]] for kind in KINDS}
    total = sum(len(values) for values in latencies.values())
    return {"processes": processes, "threads": clients, "seconds": seconds,
            "queries": total, "qps": round(total / seconds, 1),
            "types": summary(latencies), "wall_s": round(time.perf_counter() - started, 1)}


# --- the server, over HTTP -----------------------------------------------------------------

def client_process(port, threads, seconds, ids, images, published, results, number):
    latencies = {kind: [] for kind in KINDS}
    failed, sequences = [], []
    barrier = threading.Barrier(threads)

    def worker(thread_number):
        http = Client(port)
        seen = []
        barrier.wait()
        deadline = time.perf_counter() + seconds
        n = number * threads + thread_number
        while time.perf_counter() < deadline:
            kind = MIX[n % len(MIX)]
            started = time.perf_counter()
            try:
                if kind == "item":
                    status, headers, data = http.get(f"/v1/similar?item_id={ids[n % len(ids)]}"
                                                     "&k=10")
                elif kind == "text":
                    status, headers, data = http.get("/v1/search?k=10&text="
                                                     + TEXTS[n % len(TEXTS)].replace(" ", "+"))
                else:
                    status, headers, data = http.upload("/v1/search/image",
                                                        images[n % len(images)], k="10")
                version = headers.get("x-index-version")
                if status != 200 or version not in published:
                    failed.append((kind, status, data[:200].decode(errors="replace")))
                elif not seen or seen[-1] != version:
                    seen.append(version)
            except Exception as error:  # noqa: BLE001 - a failed request is what we count
                failed.append((kind, None, repr(error)))
                http.close()
            latencies[kind].append(time.perf_counter() - started)
            n += 7
        http.close()
        sequences.append(seen)

    cpu_s = run_threads(worker, threads)
    results.put({"latencies": latencies, "failed": failed, "sequences": sequences,
                 "cpu_s": cpu_s})


def run_http(root, work, workers, clients, seconds, ids, images, schedule, published) -> dict:
    from pipelines.rollback import run as rollback

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    server = ServerProcess(root, os.path.join(work, "server.log"), "--poll-seconds", "1",
                           "--cache-dir", os.path.join(work, "cache"), workers=workers)
    try:
        server_cpu = _cpu_seconds(server.pid)
        processes = 2
        pool = [context.Process(target=client_process, args=(
            server.port, clients // processes, seconds, ids, images, published, results, n))
            for n in range(processes)]
        started = time.perf_counter()
        for process in pool:
            process.start()
        events = []
        for at, version in schedule:
            time.sleep(max(0.0, started + at * seconds - time.perf_counter()))
            rollback(["--index", root, "--version", version])
            events.append((round(time.perf_counter() - started, 1), version))
        parts = [results.get(timeout=seconds + 120) for _ in pool]
        for process in pool:
            process.join()
        metrics = server.client.get("/metrics")[2].decode()
        server_cpu = _cpu_seconds(server.pid) - server_cpu
    finally:
        server.stop()
    latencies = {kind: [v for part in parts for v in part["latencies"][kind]] for kind in KINDS}
    total = sum(len(values) for values in latencies.values())
    failed = [f for part in parts for f in part["failed"]]
    sequences = [s for part in parts for s in part["sequences"]]
    expected = [published[0]] + [version for _, version in schedule]
    return {"workers": workers, "clients": clients, "seconds": seconds, "requests": total,
            "rps": round(total / seconds, 1), "failed": len(failed), "failures": failed[:10],
            "types": summary(latencies), "publications": events,
            "clients_in_order": sum(seq == expected for seq in sequences),
            "client_sequences": sorted({" > ".join(seq) for seq in sequences}),
            "client_cpu_s": round(sum(part["cpu_s"] for part in parts), 1),
            "server_cpu_s": round(server_cpu, 1),
            "swaps": _metric(metrics, "catalog_index_serve_swaps_total"),
            "failed_swaps": _metric(metrics, "catalog_index_serve_failed_swaps_total"),
            "swap_seconds": _swap_seconds(metrics)}


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (workers), from /proc."""
    total = 0.0
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)],
                                                    capture_output=True, text=True).stdout.split()]
    ticks = os.sysconf("SC_CLK_TCK")
    for each in pids:
        try:
            fields = open(f"/proc/{each}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def _swap_seconds(text: str) -> str:
    total = _metric(text, "catalog_index_serve_swap_duration_seconds_sum")
    count = _metric(text, "catalog_index_serve_swap_duration_seconds_count")
    return f"{count:.0f} opens, {total / max(count, 1):.2f} s each on average"


# --- versions to publish -------------------------------------------------------------------

def prepare(source: str, work: str) -> tuple:
    """The work root: a copy of ``source``'s published version, and two more versions of
    the demo's catalog with 100 and 200 more products (built once, kept), LATEST back on
    the first. -> (root, [the three version ids])."""
    from catalog_index import versions
    from pipelines.build_index import run as build
    from pipelines.demo import write_sample_catalog
    from pipelines.rollback import run as rollback

    root = os.path.join(work, "index")
    first = versions.read_latest(source).version_id
    ids = [first, "load-2", "load-3"]
    if not all(os.path.exists(os.path.join(root, "versions", v, "manifest.json")) for v in ids):
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(os.path.join(root, "versions"))
        shutil.copytree(os.path.join(source, "versions", first),
                        os.path.join(root, "versions", first))
        with open(os.path.join(root, "LATEST"), "w") as stream:
            stream.write(first + "\n")
        manifest = versions.read_manifest(root, first)
        items = manifest["counts"]["input"]
        for version, extra in (("load-2", 100), ("load-3", 200)):
            catalog = write_sample_catalog(os.path.join(work, "catalog"), items + extra)
            assert build(["--catalog", catalog, "--output", root, "--num-shards",
                          str(manifest["index"]["num_shards"]), "--version-id", version]) == 0
    assert rollback(["--index", root, "--version", first]) == 0
    return root, ids


def run_load(args) -> dict:
    os.makedirs(args.work, exist_ok=True)
    root, published = prepare(args.index, args.work)
    cache = os.path.join(args.work, "library-cache")
    ids, images = item_ids(root, cache), query_images()
    load = os.popen("cat /proc/loadavg").read().split()[:3]
    print(f"load average before: {' '.join(load)}", file=sys.stderr)
    schedule = [(0.25, published[1]), (0.5, published[2]), (0.75, published[1])]
    shutil.rmtree(os.path.join(args.work, "cache"), ignore_errors=True)  # the server verifies
    http = run_http(root, args.work, args.workers, args.clients, args.seconds, ids, images,
                    schedule, published)
    library = [run_library(root, cache, args.clients, processes, args.library_seconds, ids,
                           images) for processes in sorted({1, args.workers})]
    best = max(library, key=lambda run: run["qps"])
    result = {"http": http, "library": library,
              "ratio_to_library": round(http["rps"] / best["qps"], 3),
              "load_average_before": load, "cores": os.cpu_count()}
    with open(os.path.join(args.work, "results.json"), "w") as stream:
        json.dump(result, stream, indent=1)
    print_load(result)
    return result


def print_load(result: dict) -> None:
    http = result["http"]
    print(f"HTTP: {http['workers']} workers, {http['clients']} clients, {http['seconds']} s: "
          f"{http['requests']:,} requests, {http['rps']} per second, {http['failed']} failed; "
          f"{http['clients_in_order']} of {http['clients']} clients saw the versions in order "
          f"({'; '.join(http['client_sequences'])}); publications at {http['publications']}; "
          f"{http['swaps']:.0f} swaps, {http['failed_swaps']:.0f} failed ({http['swap_seconds']});"
          f" CPU: server {http['server_cpu_s']} s, clients {http['client_cpu_s']} s")
    for run in [("HTTP", http)] + [(f"library, {r['processes']} process(es)", r)
                                   for r in result["library"]]:
        name, figures = run
        rate = figures.get("rps", figures.get("qps"))
        cells = "  ".join(f"{kind}: p50 {figures['types'][kind]['p50_ms']} ms, p99 "
                          f"{figures['types'][kind]['p99_ms']} ms ({figures['types'][kind]['count']:,})"
                          for kind in KINDS)
        print(f"{name:<24} {rate:>8} /s  {cells}")
    print(f"HTTP / best library: {result['ratio_to_library']}")


# --- memory --------------------------------------------------------------------------------

def smaps_rollup(pid: int) -> dict:
    found = {}
    with open(f"/proc/{pid}/smaps_rollup") as stream:
        for line in stream:
            parts = line.split()
            if parts[0].rstrip(":") in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Private_Dirty"):
                found[parts[0].rstrip(":")] = int(parts[1]) / 1024
    return found


def run_memory(args) -> list:
    rows = []
    images = query_images(8)
    for root in args.roots:
        cache = os.path.join(args.work, "memory-cache-" + str(abs(hash(root)) % 10**8))
        ids = item_ids(root, cache, 1000)
        from catalog_index import versions

        has_model = bool(versions.read_manifest(root, versions.read_latest(root).version_id)
                         .get("query_model"))
        for workers in (1, 2):
            with ServerProcess(root, os.path.join(args.work, f"memory-{workers}.log"),
                               "--cache-dir", cache, workers=workers) as server:
                client = Client(server.port)
                for n in range(args.queries):
                    client.get(f"/v1/similar?item_id={ids[n % len(ids)]}&k=10")
                    client.get("/v1/search?k=10&text=" + TEXTS[n % len(TEXTS)].replace(" ", "+"))
                    if has_model and n % 5 == 0:
                        client.upload("/v1/search/image", images[n % len(images)], k="10")
                    client.close()  # the next connection may go to the other worker
                time.sleep(0.5)
                children = [int(p) for p in subprocess.run(
                    ["pgrep", "-P", str(server.pid)], capture_output=True,
                    text=True).stdout.split()]
                processes = [server.pid] + children
                each = [smaps_rollup(pid) for pid in processes]
                rows.append({"root": root, "workers": workers, "processes": len(processes),
                             "pss_mb": round(sum(e["Pss"] for e in each), 1),
                             "pss_file_mb": round(sum(e["Pss_File"] for e in each), 1),
                             "pss_anon_mb": round(sum(e["Pss_Anon"] for e in each), 1),
                             "each_pss_mb": [round(e["Pss"], 1) for e in each],
                             "each_private_dirty_mb": [round(e["Private_Dirty"], 1)
                                                       for e in each]})
                print(json.dumps(rows[-1]), file=sys.stderr)
        one, two = rows[-2], rows[-1]
        print(f"{root}: PSS 1 worker {one['pss_mb']} MB, 2 workers {two['pss_mb']} MB "
              f"(x{two['pss_mb'] / one['pss_mb']:.2f}); per process {two['each_pss_mb']}")
    with open(os.path.join(args.work, "memory.json"), "w") as stream:
        json.dump(rows, stream, indent=1)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser("load")
    load.add_argument("--index", default="out")
    load.add_argument("--workers", type=int, default=2)
    load.add_argument("--clients", type=int, default=16)
    load.add_argument("--seconds", type=float, default=60.0)
    load.add_argument("--library-seconds", type=float, default=20.0)
    load.add_argument("--work", default="/tmp/catalog-index-serve-load")
    memory = commands.add_parser("memory")
    memory.add_argument("roots", nargs="+")
    memory.add_argument("--queries", type=int, default=600)
    memory.add_argument("--work", default="/tmp/catalog-index-serve-load")
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    if args.command == "load":
        run_load(args)
    else:
        run_memory(args)


if __name__ == "__main__":
    main()
