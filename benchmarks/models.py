"""The model zoo (issue 19): speed and retrieval quality of each built-in model, in one run.

    .venv/bin/python -m benchmarks.models [--items 2000] [--speed-items 256] [--threads 2]

For each of efficientnet_lite0/1/2, on the TFLite runtime (the CPU default):

- bare model img/s: ``--speed-items`` Fashion-MNIST test images, already preprocessed to
  the model's input size (uint8), run in batches of 32 on one interpreter with
  ``--threads`` threads; the best of three passes after one warm-up batch. Decoding and
  preprocessing are not timed (they cost the same for every model up to the resize);
- leave-one-out P@10 (cosine) of the pooled features on the first ``--items`` Fashion-MNIST
  t10k images: the raw 1280-d vectors (the model's embedding is the pooled features, unit
  length: the same cosine) and PCA 256 fitted on the same images (models/projection.py,
  PCA only: no category is given).

Each 28x28 image becomes the RGB PNG a catalog would hold and goes through the production
``preprocess_image`` (upscaled to the model's input size). Conversions are cached as the
pipeline caches them, so a second run does not convert again.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from models.loader import BUILTIN_MODELS

BATCH_SIZE = 32
PCA_DIMS = 256


def fashion_mnist_pngs(count: int):
    from benchmarks.fashion_mnist_quality import to_png_bytes
    from pipelines.demo import load_fashion_mnist

    images, labels = load_fashion_mnist("t10k")
    return [to_png_bytes(image) for image in images[:count]], np.asarray(labels[:count])


def bare_images_per_second(model, pixels: np.ndarray) -> float:
    model.predict(pixels[:BATCH_SIZE])  # warm-up: allocate the interpreter's tensors
    best = float("inf")
    for _ in range(3):
        tick = time.perf_counter()
        for start in range(0, len(pixels), BATCH_SIZE):
            model.predict(pixels[start:start + BATCH_SIZE])
        best = min(best, time.perf_counter() - tick)
    return len(pixels) / best


def embed_all(model, pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([model.predict(pixels[start:start + BATCH_SIZE]).embeddings
                           for start in range(0, len(pixels), BATCH_SIZE)])


def measure(name: str, files, labels, args) -> dict:
    from benchmarks.fashion_mnist_quality import precision_at_k
    from models import projection
    from models.loader import load_model
    from models.preprocessing import preprocess_image

    tick = time.perf_counter()
    model = load_model(name, runtime="tflite", cache_dir=args.cache_dir, threads=args.threads)
    load_seconds = time.perf_counter() - tick
    spec = model.info.preprocessing
    pixels = np.stack([preprocess_image(data, spec).pixels for data in files])
    speed = bare_images_per_second(model, pixels[:args.speed_items])
    vectors = embed_all(model, pixels)
    pca = projection.fit(vectors, PCA_DIMS)
    return {"name": name, "input_size": spec.input_size, "load_seconds": load_seconds,
            "images_per_second": speed,
            "p10_raw": float(precision_at_k(vectors, labels).mean()),
            "p10_pca": float(precision_at_k(pca.apply(vectors), labels).mean()),
            "pca_explained": pca.explained_variance,
            "tflite_bytes": os.path.getsize(model.tflite_path)}


def print_table(results, args) -> None:
    print(f"\nTFLite, batch {BATCH_SIZE}, {args.threads} threads, bare img/s on "
          f"{args.speed_items} images; P@10 leave-one-out cosine on {args.items} Fashion-MNIST "
          "t10k images\n")
    print(f"| model | input | TFLite MB | bare img/s | P@10 raw 1280-d | P@10 PCA {PCA_DIMS} |")
    print("|---|---|---|---|---|---|")
    base = results[0]["images_per_second"]
    for row in results:
        print(f"| {row['name']} | {row['input_size']} px | {row['tflite_bytes'] / 1e6:.1f} | "
              f"{row['images_per_second']:.1f} ({row['images_per_second'] / base:.2f}) | "
              f"{row['p10_raw']:.3f} | {row['p10_pca']:.3f} "
              f"({row['pca_explained']:.0%} of the variance) |")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--speed-items", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(BUILTIN_MODELS),
                        choices=BUILTIN_MODELS)
    parser.add_argument("--cache-dir", default=None, help="model cache (default: the pipeline's)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    files, labels = fashion_mnist_pngs(args.items)
    results = []
    for name in args.models:
        results.append(measure(name, files, labels, args))
        row = results[-1]
        print(f"{name}: loaded in {row['load_seconds']:.1f} s, "
              f"{row['images_per_second']:.1f} img/s, P@10 {row['p10_raw']:.3f} raw, "
              f"{row['p10_pca']:.3f} PCA {PCA_DIMS}", flush=True)
    print_table(results, args)


if __name__ == "__main__":
    main()
