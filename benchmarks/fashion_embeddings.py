"""Real embeddings for the ANN benchmark: every Fashion-MNIST image (train + test, 70,000),
and each mirrored, through the production preprocessing and model, cached as .npy.

    .venv/bin/python -m benchmarks.fashion_embeddings [--count 140000]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from PIL import Image

from models.loader import load_model
from models.preprocessing import fit_to_square
from pipelines.demo import load_fashion_mnist

CACHE = "benchmarks/data/fashion-embeddings.npy"


def fashion_images():
    train, _ = load_fashion_mnist("train")
    test, _ = load_fashion_mnist("t10k")
    originals = np.concatenate([test, train])
    return np.concatenate([originals, originals[:, :, ::-1]])  # + mirror images


def embeddings(count: int, path: str = CACHE) -> np.ndarray:
    """[count, 1280] float32, computed once and cached."""
    if os.path.exists(path):
        cached = np.load(path, mmap_mode="r")
        if len(cached) >= count:
            return np.asarray(cached[:count])
    model = load_model()
    spec = model.info.preprocessing
    images = fashion_images()[:count]
    out = np.empty((len(images), model.info.embedding_dim), np.float32)
    started = time.perf_counter()
    for start in range(0, len(images), 256):
        chunk = images[start:start + 256]
        rgb = [np.asarray(Image.fromarray(image).convert("RGB")) for image in chunk]
        pixels = np.stack([fit_to_square(image, spec).pixels for image in rgb])
        for offset in range(0, len(pixels), 32):
            batch = pixels[offset:offset + 32]
            out[start + offset:start + offset + len(batch)] = model.predict(batch).embeddings
        if start % 10240 == 0:
            print(f"  {start + len(chunk)} / {len(images)} embedded "
                  f"({(start + len(chunk)) / (time.perf_counter() - started):.0f}/s)", flush=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=140_000)
    embeddings(parser.parse_args().count)
