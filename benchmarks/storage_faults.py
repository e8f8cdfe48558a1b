"""Object storage that misbehaves: the same gs:// build, clean and through a fault-injecting
proxy (tests/fault_proxy.py), in one run.

    .venv/bin/python -m benchmarks.storage_faults [--items 300] [--delay 3]

A real GCS emulator (fake-gcs-server) on loopback holds a catalog of Fashion-MNIST PNGs
(28x28, one CSV row each) plus 2 rows naming missing objects. Each build is
``catalog-index build`` in a fresh process, with ``STORAGE_EMULATOR_HOST`` pointing at the
proxy. Each mix is built ``--repeat`` times, the mixes taking turns, and the fastest build of
each counts: the machine's own noise (it is shared, 2 cores) is larger than a second. Printed
per mix: wall time of every build, the fastest one's ratio to the fastest clean build, the
faults injected, the counts, and whether the artifacts (every file but the manifest and the
reports, which carry the version id and timings) are byte-identical to the clean build's.

Mixes: ``clean`` (the proxy forwards everything), ``delays`` (10% of all requests held
``--delay`` seconds), ``faults`` (503, 429, dropped connections and cut responses on 20%
of all requests, and 503 on 30% more of the writes).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from catalog_index import storage
from runners.beam_gcs import use_anonymous_beam_credentials_with_emulator
from tests.fault_proxy import READS, WRITES, FaultProxy, Rule
from tests.gcs_emulator import GcsEmulator

BUCKET = "faults"


def upload_catalog(count: int) -> str:
    from PIL import Image

    from pipelines.demo import FASHION_CLASSES, load_fashion_mnist

    images, labels = load_fashion_mnist("t10k")

    def upload(n):
        buffer = io.BytesIO()
        Image.fromarray(images[n]).save(buffer, format="PNG")
        uri = f"gs://{BUCKET}/images/fm-{n:05d}.png"
        storage.write_bytes(uri, buffer.getvalue())
        return [f"fm-{n:05d}", uri, FASHION_CLASSES[labels[n]]]

    with ThreadPoolExecutor(16) as pool:
        rows = list(pool.map(upload, range(count)))
    rows += [[f"missing-{n}", f"gs://{BUCKET}/images/missing-{n}.png", "Gone"] for n in range(2)]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["item_id", "image_uri", "title"])
    writer.writerows(rows)
    catalog = f"gs://{BUCKET}/catalog.csv"
    storage.write_text(catalog, text.getvalue())
    return catalog


def build(catalog: str, version: str, proxy: FaultProxy):
    env = {**os.environ, "STORAGE_EMULATOR_HOST": proxy.url}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "build", "--catalog", catalog,
         "--output", f"gs://{BUCKET}/index", "--version-id", version,
         "--max-failure-rate", "0.05"],
        env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"build {version} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds, done.stdout.strip().splitlines()[0]


def artifacts(version: str) -> dict:
    prefix = f"gs://{BUCKET}/index/versions/{version}/"
    return {path[len(prefix):]: storage.read_bytes(path) for path in storage.list_files(prefix)
            if not path.endswith(("manifest.json", "report.html", "report.json"))
            and "/changes/" not in path}


def report(mix: str, walls: dict, proxy: FaultProxy, summary: str) -> None:
    last = len(walls[mix]) - 1
    best, clean = min(walls[mix]), min(walls["clean"])
    injected = ", ".join(f"{n} {fault}" for fault, n in proxy.injected.items() if n)
    same = "" if mix == "clean" else (
        ", artifacts byte-identical to clean"
        if artifacts(f"{mix}-{last}") == artifacts(f"clean-{last}")
        else ", ARTIFACTS DIFFER from clean")
    print(f"{mix:7s} {best:6.1f} s  {best / clean:4.2f}x clean  (builds: "
          f"{', '.join(f'{s:.1f}' for s in walls[mix])} s)  {proxy.requests} requests, "
          f"injected: {injected or 'none'}{same}")
    print(f"        {summary}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--delay", type=float, default=3.0, help="seconds a delayed request waits")
    parser.add_argument("--repeat", type=int, default=3, help="builds per mix")
    args = parser.parse_args(argv)

    emulator = GcsEmulator()
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
    use_anonymous_beam_credentials_with_emulator()
    try:
        storage.gcs_client().create_bucket(BUCKET)
        catalog = upload_catalog(args.items)
        print(f"{args.items} Fashion-MNIST PNGs + 2 missing objects on fake-gcs-server, "
              f"{os.cpu_count()} cores; each build a fresh `catalog-index build` process")
        mixes = {
            "clean": [],
            "delays": [Rule("delay", 0.10, seconds=args.delay)],
            "faults": [Rule("503", 0.05), Rule("429", 0.05), Rule("reset", 0.05),
                       Rule("cut", 0.05, methods=READS), Rule("503", 0.30, methods=WRITES)],
        }
        walls = {mix: [] for mix in mixes}
        for attempt in range(args.repeat):
            for mix, rules in mixes.items():
                proxy = FaultProxy(emulator.url, rules, seed=1)
                try:
                    seconds, summary = build(catalog, f"{mix}-{attempt}", proxy)
                finally:
                    proxy.stop()
                walls[mix].append(seconds)
                if attempt == args.repeat - 1:
                    report(mix, walls, proxy, summary)
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
