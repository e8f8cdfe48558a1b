"""What cheaper decode-and-resize paths would cost in embedding quality, and what they save.

    .venv/bin/pip install -e '.[bench]'   # OpenCV, for the alternatives only
    .venv/bin/python -m benchmarks.resize_quality [--sample 400]

Decoding and resizing an 800x800 catalog JPEG is the largest CPU cost of the build after
inference. This script measures, on real catalog-size JPEGs (the ones
``benchmarks.build_throughput`` writes), the time of each candidate path and how far its
embeddings move from a reference: a full-size decode resized with Pillow's antialiased
bicubic filter. It also measures a noise floor: the same reference after re-encoding the
JPEG once more at quality 90, a change no one would call a quality loss.

Measures per path: milliseconds per image (decode + resize, one thread, best of 3 over the
first 200 images), mean and minimum cosine between its embedding and the reference's, and
how often the model's top-1 ImageNet class stays the same.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import simplejpeg
from PIL import Image

from benchmarks.build_throughput import add_catalog_arguments, catalog_paths
from models.preprocessing import preprocess_image, resize

SIZE = 224


def _decode(data: bytes, side: int = 0) -> np.ndarray:
    """libjpeg-turbo decode at the smallest M/8 scale at least ``side`` pixels wide and
    high (0: full size)."""
    if not side:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    return simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=side, min_height=side)


def _pillow(pixels: np.ndarray, method) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize((SIZE, SIZE), method))


def candidate_paths() -> dict:
    """name -> function(jpeg bytes) -> uint8 [224, 224, 3]."""
    import cv2

    cv2.setNumThreads(1)
    from models.loader import LITE0_PREPROCESSING

    def opencv(side, interpolation):
        return lambda data: cv2.resize(_decode(data, side), (SIZE, SIZE),
                                       interpolation=interpolation)

    return {
        "reference: full-size decode, Pillow bicubic":
            lambda data: _pillow(_decode(data), Image.BICUBIC),
        "the build: preprocess_image (1/2-scale decode, SIMD bicubic)":
            lambda data: preprocess_image(data, LITE0_PREPROCESSING).pixels,
        "full-size decode, SIMD bicubic": lambda data: resize(_decode(data), SIZE, SIZE),
        "3/8-scale decode, Pillow bicubic (the build until session 4)":
            lambda data: _pillow(_decode(data, SIZE), Image.BICUBIC),
        "3/8-scale decode, Pillow bilinear": lambda data: _pillow(_decode(data, SIZE),
                                                                  Image.BILINEAR),
        "3/8-scale decode, OpenCV area": opencv(SIZE, cv2.INTER_AREA),
        "3/8-scale decode, OpenCV bilinear": opencv(SIZE, cv2.INTER_LINEAR),
        "3/8-scale decode, OpenCV bicubic": opencv(SIZE, cv2.INTER_CUBIC),
        "1/4-scale decode (200 px), Pillow bicubic up":
            lambda data: _pillow(_decode(data, 200), Image.BICUBIC),
        "full-size decode, OpenCV area": opencv(0, cv2.INTER_AREA),
    }


def seconds_per_image(function, datas, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for data in datas:
            function(data)
        best = min(best, (time.perf_counter() - started) / len(datas))
    return best


def main(argv=None):
    from models.loader import load_model

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_catalog_arguments(parser)
    parser.set_defaults(images=4000)
    parser.add_argument("--sample", type=int, default=400,
                        help="images compared (every N-th of the catalog; default 400)")
    args = parser.parse_args(argv)
    paths = catalog_paths(args)
    paths = paths[:: max(1, len(paths) // args.sample)][: args.sample]
    datas = [open(path, "rb").read() for path in paths]
    model = load_model()

    def embed(function):
        output = model.predict(np.stack([function(data) for data in datas]))
        return output.embeddings, output.probabilities.argmax(axis=1)

    paths_by_name = candidate_paths()
    reference = embed(paths_by_name["reference: full-size decode, Pillow bicubic"])
    re_encoded = embed(lambda data: _pillow(_decode(simplejpeg.encode_jpeg(
        _decode(data), quality=90, colorspace="RGB")), Image.BICUBIC))

    print(f"{len(datas)} JPEGs of {args.size}x{args.size}; against the reference path")
    print(f"{'path':66s} {'ms/img':>7s} {'cos mean':>9s} {'cos min':>8s} {'same top-1':>10s}")

    def report(name, embedded, milliseconds):
        cosine = (embedded[0] * reference[0]).sum(axis=1)
        same = np.mean(embedded[1] == reference[1]) * 100
        print(f"{name:66s} {milliseconds:7s} {cosine.mean():9.5f} {cosine.min():8.4f} "
              f"{same:9.1f}%")

    report("noise floor: the reference after one more JPEG save at quality 90", re_encoded, "")
    for name, function in paths_by_name.items():
        milliseconds = f"{seconds_per_image(function, datas[:200]) * 1e3:.2f}"
        report(name, reference if name.startswith("reference") else embed(function),
               milliseconds)


if __name__ == "__main__":
    main()
