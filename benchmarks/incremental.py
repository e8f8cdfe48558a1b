"""Incremental nightly builds: a night with 2% of the catalog changed, against a full build.

    .venv/bin/python -m benchmarks.incremental [--items 20000] [--gcs-items 2000] [--work DIR]

Night A: ``--items`` product images, 800x800 JPEGs (Fashion-MNIST items scaled up, tinted,
on white), one CSV row each with a title and a category. Night B: 1% of the images
replaced in place (same path, other bytes), 0.5% new items, 0.5% items removed. Each build
is ``catalog-index build`` in a fresh process; CPU is the process's user + system time.

Locally, in one run:
- full build of A, then B incrementally on top of it: wall time and CPU of each;
- the marginal CPU of an embedded item (two full builds: ``--items`` and 200 items) and
  of an unchanged one (two builds with nothing changed, at the same sizes), so that the
  fixed costs (model load, planning, publishing) cancel out.

On the GCS emulator (``--gcs-items``, fewer: the emulator holds every object in memory),
the same two nights, B built once directly and once through a proxy that delays every
request 20 ms: objects downloaded by the build (before the report reads the version back),
and wall time.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import resource
import shutil
from runners.beam_gcs import use_anonymous_beam_credentials_with_emulator
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

PYTHON = sys.executable
SIDE = 800
TINTS = ((50, 50, 50), (200, 40, 40), (40, 90, 200), (40, 150, 60), (230, 200, 40))
SMALL = 200


def product_jpeg(number: int, variant: int = 0) -> bytes:
    """An 800x800 product photo: a Fashion-MNIST item scaled up, tinted, on white."""
    from PIL import Image

    images, _ = _fashion()
    item = images[(number * 7919 + variant * 104729) % len(images)].astype(np.float32) / 255
    tint = np.array(TINTS[(number + variant) % len(TINTS)], np.float32)
    rgb = 255 - item[..., None] * (255 - tint)  # dark garment pixels take the tint
    image = Image.fromarray(rgb.astype(np.uint8)).resize((SIDE, SIDE), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


_FASHION = None


def _fashion():
    global _FASHION
    if _FASHION is None:
        from pipelines.demo import load_fashion_mnist

        _FASHION = load_fashion_mnist("t10k")
    return _FASHION


def _write_image(job) -> None:
    path, number, variant = job
    with open(path, "wb") as stream:
        stream.write(product_jpeg(number, variant))


def write_images(jobs) -> None:
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_write_image, jobs, chunksize=64))


def row(number: int, uri: str) -> list:
    from pipelines.demo import FASHION_CLASSES

    images, labels = _fashion()
    label = FASHION_CLASSES[labels[(number * 7919) % len(images)]]
    return [f"item-{number:06d}", uri, f"{label} no. {number}", label]


def write_csv(path: str, rows) -> str:
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["item_id", "image_uri", "title", "category"])
        writer.writerows(rows)
    return path


def nights(items: int):
    """-> (numbers in A, numbers replaced, numbers added, numbers removed)."""
    rng = np.random.default_rng(7)
    night_a = list(range(items))
    changed = rng.choice(items, size=items // 50, replace=False)
    replaced = sorted(int(n) for n in changed[: items // 100])
    removed = sorted(int(n) for n in changed[items // 100:])
    added = list(range(items, items + items // 200))
    return night_a, replaced, added, removed


def build(catalog: str, output: str, version: str, *extra: str, env=None) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([PYTHON, "-m", "pipelines.cli", "build", "--catalog", catalog,
                           "--output", output, "--version-id", version, *extra],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"build {version} failed: {done.stderr.strip()[-800:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "line": done.stdout.splitlines()[0]}


def local(args, work: str) -> None:
    images = os.path.join(work, "images")
    os.makedirs(images, exist_ok=True)
    night_a, replaced, added, removed = nights(args.items)
    path = lambda n: os.path.join(images, f"item-{n:06d}.jpg")  # noqa: E731
    started = time.perf_counter()
    write_images([(path(n), n, 0) for n in night_a + added
                  if n in replaced or not os.path.exists(path(n))])  # a rerun starts from A
    for n in added:
        os.remove(path(n))  # they appear on night B
    print(f"{args.items:,} 800x800 JPEGs written in {time.perf_counter() - started:.0f} s "
          f"({os.cpu_count()} cores)")
    catalog_a = write_csv(os.path.join(work, "night-a.csv"), [row(n, path(n)) for n in night_a])
    small = write_csv(os.path.join(work, "small.csv"), [row(n, path(n)) for n in night_a[:SMALL]])

    root = os.path.join(work, "index")
    full = build(catalog_a, root, "a")
    print(f"full build A:          {full['wall']:7.1f} s wall {full['cpu']:7.1f} s CPU  "
          f"{full['line']}")
    write_images([(path(n), n, 1) for n in replaced] + [(path(n), n, 0) for n in added])
    gone = set(removed)
    catalog_b = write_csv(os.path.join(work, "night-b.csv"),
                          [row(n, path(n)) for n in night_a + added if n not in gone])
    incremental = build(catalog_b, root, "b")
    print(f"incremental build B:   {incremental['wall']:7.1f} s wall {incremental['cpu']:7.1f} s "
          f"CPU  {incremental['line']}")
    print(f"  B: {len(replaced)} replaced in place, {len(added)} added, {len(removed)} removed; "
          f"incremental / full: wall {incremental['wall'] / full['wall']:.3f}, "
          f"CPU {incremental['cpu'] / full['cpu']:.3f}")

    unchanged = build(catalog_b, root, "b-again")
    small_root = os.path.join(work, "small-index")
    small_full = build(small, small_root, "a")
    small_unchanged = build(small, small_root, "a-again")
    count_b = len(night_a) + len(added) - len(removed)
    embedded = (full["cpu"] - small_full["cpu"]) / (args.items - SMALL)
    kept = (unchanged["cpu"] - small_unchanged["cpu"]) / (count_b - SMALL)
    print(f"nothing changed:       {unchanged['wall']:7.1f} s wall {unchanged['cpu']:7.1f} s CPU "
          f"({count_b:,} items); {SMALL} items: full {small_full['cpu']:.1f} s CPU, "
          f"nothing changed {small_unchanged['cpu']:.1f} s CPU")
    print(f"marginal CPU: {embedded * 1000:.2f} ms per embedded item, {kept * 1000:.3f} ms per "
          f"unchanged item: {kept / embedded:.3f} of an embedded one")


def on_gcs(args, work: str) -> None:
    from catalog_index import storage
    from tests.fault_proxy import FaultProxy, Rule
    from tests.gcs_emulator import GcsEmulator

    emulator = GcsEmulator()
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
    use_anonymous_beam_credentials_with_emulator()
    try:
        storage.gcs_client().create_bucket("nightly")
        night_a, replaced, added, removed = nights(args.gcs_items)
        uri = lambda n: f"gs://nightly/images/item-{n:06d}.jpg"  # noqa: E731
        local_path = lambda n: os.path.join(work, "images", f"item-{n:06d}.jpg")  # noqa: E731

        def upload(job):
            number, variant = job
            data = product_jpeg(number, variant) if variant else open(local_path(number), "rb").read()
            storage.write_bytes(uri(number), data)

        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(upload, [(n, 0) for n in night_a]))
        catalog_a = write_csv(os.path.join(work, "gcs-a.csv"), [row(n, uri(n)) for n in night_a])
        storage.upload_file(catalog_a, "gs://nightly/night-a.csv")
        print(f"GCS emulator: {args.gcs_items:,} objects")
        for root in ("gs://nightly/direct", "gs://nightly/slow"):
            result = build("gs://nightly/night-a.csv", root, "a")
            print(f"  full build A ({root}): {result['wall']:6.1f} s wall")
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(upload, [(n, 1) for n in replaced] + [(n, 2) for n in added]))
        gone = set(removed)
        catalog_b = write_csv(os.path.join(work, "gcs-b.csv"),
                              [row(n, uri(n)) for n in night_a + added if n not in gone])
        storage.upload_file(catalog_b, "gs://nightly/night-b.csv")
        for root, rules in (("gs://nightly/direct", []),
                            ("gs://nightly/slow", [Rule("delay", 1.0, seconds=0.02)])):
            proxy = FaultProxy(emulator.url, rules)
            try:
                result = build("gs://nightly/night-b.csv", root, "b",
                               env={**os.environ, "STORAGE_EMULATOR_HOST": proxy.url})
            finally:
                proxy.stop()
            log = [(method, path) for _, method, path, _ in proxy.log]
            report = next((n for n, (method, path) in enumerate(log)
                           if "/download/" in path and "versions%2Fb%2F" in path), len(log))
            downloads = sum(1 for method, path in log[:report]
                            if method == "GET" and "/download/" in path and "images%2F" in path)
            listings = sum(1 for method, path in log if "/o?" in path and "prefix=images" in path)
            delay = "20 ms on every request" if rules else "no added latency"
            print(f"  incremental B, {delay}: {result['wall']:6.1f} s wall, {downloads} images "
                  f"downloaded of {len(replaced) + len(added)} new or replaced, {listings} "
                  f"listing requests, {proxy.requests} requests in all; {result['line']}")
    finally:
        emulator.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--gcs-items", type=int, default=2_000)
    parser.add_argument("--work", default=None, help="folder for images and indexes "
                        "(default: a temporary one, removed at the end)")
    args = parser.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="incremental-")
    try:
        for name in ("index", "small-index"):
            shutil.rmtree(os.path.join(work, name), ignore_errors=True)
        local(args, work)
        on_gcs(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
