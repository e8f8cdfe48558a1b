"""End-to-end build throughput against the bare model and a naive loop, in one run.

    .venv/bin/python -m benchmarks.build_throughput [--images 2000] [--size 800]

Writes N real JPEGs of catalog size (size x size, made from real photos with random crops,
flips and zoom, so every file differs), then measures on this machine:

- build:  ``catalog-index build`` end to end with its local defaults (process start, model
  load, decode, inference, captions, Annoy, Parquet, validation), as wall-clock images/s and
  as the steady-state rate (N/2 and N images; the difference cancels start-up);
- model:  the bare model (default runtime) on pre-decoded batches of 32, both as one
  interpreter using every core and as one single-thread interpreter per core fed by as
  many threads; the faster of the two is the limit;
- naive:  one image at a time: full-size decode, resize, Keras predict on a batch of one.

and prints images/s for each and the ratios build/model and build/naive.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
from PIL import Image

from tests.real_images import encode, real_photos


def write_catalog_images(folder: str, count: int, size: int, seed: int = 0) -> list:
    os.makedirs(folder, exist_ok=True)
    paths = sorted(os.path.join(folder, name) for name in os.listdir(folder))
    if len(paths) >= count:
        return paths[:count]
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(photo) for photo in real_photos().values()]
    paths = []
    for n in range(count):
        photo = photos[n % len(photos)]
        zoom = rng.uniform(0.6, 1.0)
        w, h = int(photo.width * zoom), int(photo.height * zoom)
        left, top = rng.integers(0, photo.width - w + 1), rng.integers(0, photo.height - h + 1)
        crop = photo.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = os.path.join(folder, f"product-{n:06d}.jpg")
        with open(path, "wb") as stream:
            stream.write(encode(np.asarray(crop), quality=90))
        paths.append(path)
    return paths


def measure_build(paths: list, extra_args=()) -> float:
    """Seconds for ``catalog-index build`` over exactly these files (linked into a folder)."""
    from pipelines.build_index import run

    scratch = tempfile.mkdtemp(prefix="bench-build-")
    images = os.path.join(scratch, "images")
    os.makedirs(images)
    for path in paths:
        os.symlink(os.path.abspath(path), os.path.join(images, os.path.basename(path)))
    try:
        started = time.perf_counter()
        status = run(["--catalog", os.path.join(images, "*.jpg"), "--output",
                      os.path.join(scratch, "index"), "--num-shards", "4", "--version-id", "bench",
                      *extra_args])
        elapsed = time.perf_counter() - started
        if status != 0:
            raise SystemExit(f"build failed with status {status}")
        return elapsed
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def measure_model(paths: list, threads, callers: int, batch_size: int = 32,
                  repeats: int = 3) -> float:
    """Seconds per image for the bare model on pre-decoded batches of ``batch_size``,
    with ``threads`` per interpreter and ``callers`` threads feeding it at once."""
    from concurrent.futures import ThreadPoolExecutor

    from models.loader import load_model
    from models.preprocessing import preprocess_image

    model = load_model(threads=threads)
    pixels = np.stack([preprocess_image(open(path, "rb").read(), model.info.preprocessing).pixels
                       for path in paths[:256]])
    batches = [pixels[i:i + batch_size] for i in range(0, len(pixels), batch_size)] * repeats
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(model.predict, batches[:callers]))  # warm-up: every interpreter built
        started = time.perf_counter()
        list(pool.map(model.predict, batches))
    return (time.perf_counter() - started) / (repeats * len(pixels))


def measure_naive(paths: list, count: int = 200) -> float:
    from models.loader import load_model

    model = load_model(runtime="keras")
    started = time.perf_counter()
    for path in paths[:count]:
        image = Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)
        model.predict(np.asarray(image)[None])
    return (time.perf_counter() - started) / count


def add_catalog_arguments(parser: argparse.ArgumentParser) -> None:
    """--images, --size and --data: which generated catalog JPEGs a benchmark uses."""
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--data", default="benchmarks/data/catalog-jpegs")


def catalog_paths(args) -> list:
    return write_catalog_images(f"{args.data}-{args.size}", args.images, args.size)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_catalog_arguments(parser)
    args = parser.parse_args(argv)

    paths = catalog_paths(args)
    print(f"{len(paths)} JPEGs of {args.size}x{args.size}; {os.cpu_count()} cores")

    # Two builds, N/2 and N images: their difference cancels the fixed start-up cost
    # (imports, model load, pipeline launch) and leaves the rate a large catalog sees.
    measure_build(paths[:64])  # warm-up: file cache, conversion cache, first-run costs
    half_seconds = measure_build(paths[: len(paths) // 2])
    build_seconds = measure_build(paths)
    build_rate = len(paths) / build_seconds
    steady_rate = (len(paths) - len(paths) // 2) / (build_seconds - half_seconds)
    cores = os.cpu_count() or 1
    one_interpreter = 1 / measure_model(paths, threads=cores, callers=1)
    per_core = 1 / measure_model(paths, threads=1, callers=cores)
    model_rate = max(one_interpreter, per_core)
    naive_rate = 1 / measure_naive(paths)
    print(f"build, {len(paths)} images, wall:    {build_rate:8.1f} images/s  ({build_seconds:.1f} s)")
    print(f"build, steady state:          {steady_rate:8.1f} images/s  "
          f"(start-up {build_seconds - len(paths) / steady_rate:.1f} s)")
    print(f"bare model, batch 32, one {cores}-thread interpreter: {one_interpreter:8.1f} images/s")
    print(f"bare model, batch 32, {cores} 1-thread interpreters:  {per_core:8.1f} images/s")
    print(f"bare model, the limit (best of the two): {model_rate:8.1f} images/s")
    print(f"naive one-at-a-time:          {naive_rate:8.1f} images/s")
    print(f"ratio build / model (wall):   {build_rate / model_rate:8.2f}")
    print(f"ratio build / model (steady): {steady_rate / model_rate:8.2f}")
    print(f"ratio build / naive (wall):   {build_rate / naive_rate:8.2f}")


if __name__ == "__main__":
    main()
