"""Keras vs TFLite throughput of EfficientNet-Lite0, and how closely their embeddings agree.

The inputs are real photos (``tests.real_images.real_photos``), encoded as JPEG and run
through the production ``preprocess_image``, then stacked into pre-decoded uint8 batches:
only ``model.predict`` (normalization + inference + L2 normalization) is timed. Each
runtime is warmed up, then the two runtimes take turns over several repetitions; the
median and the best throughput are reported, with the load average (other processes on
the machine skew timings; the interleaving keeps the ratio fair).

Reproduce (under a minute on 2 idle CPU cores):

    cd /work/main && .venv/bin/python -m benchmarks.model_throughput
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Dict, List

import numpy as np

RUNTIMES = ("keras", "tflite")


def preprocessed_photos(spec) -> Dict[str, np.ndarray]:
    """Real photos -> JPEG bytes -> production preprocessing -> uint8 model pixels."""
    from models.preprocessing import preprocess_image
    from tests.real_images import encode, real_photos

    return {name: preprocess_image(encode(photo), spec).pixels
            for name, photo in real_photos().items()}


def batch_of(pixels: np.ndarray, size: int) -> np.ndarray:
    """``size`` images, cycling through the photos as often as needed."""
    return pixels[np.arange(size) % len(pixels)]


def interleaved_seconds(models, batch: np.ndarray, warmup: int,
                        repeats: int) -> Dict[str, List[float]]:
    """Seconds per ``predict(batch)`` call, per runtime. The runtimes take turns call by
    call, so a load spike from another process slows both alike and the ratio holds."""
    for model in models.values():
        for _ in range(warmup):
            model.predict(batch)
    seconds = {runtime: [] for runtime in models}
    for _ in range(repeats):
        for runtime, model in models.items():
            tick = time.perf_counter()
            model.predict(batch)
            seconds[runtime].append(time.perf_counter() - tick)
    return seconds


def images_per_second(seconds: List[float], batch_size: int) -> Dict[str, float]:
    """Median and best throughput over the timed calls."""
    return {"median": batch_size / statistics.median(seconds), "best": batch_size / min(seconds)}


def agreement(keras_output, tflite_output):
    """Per-photo cosine of the two runtimes' (unit-length) embeddings, and the share of
    photos where both pick the same top-1 class."""
    cosines = np.sum(keras_output.embeddings * tflite_output.embeddings, axis=1)
    same_top1 = np.mean(np.argmax(keras_output.probabilities, axis=1)
                        == np.argmax(tflite_output.probabilities, axis=1))
    return cosines, float(same_top1)


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg()) + " (1, 5, 15 min)"


def print_table(header, rows) -> None:
    """A Markdown table, so the output can be pasted into docs/benchmarks.md."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per runtime")
    parser.add_argument("--repeats", type=int, default=30, help="timed batches per runtime")
    parser.add_argument("--single-repeats", type=int, default=300,
                        help="timed single-image calls per runtime (batch 1)")
    return parser.parse_args()


def main() -> None:
    from models.loader import load_model

    args = parse_args()
    models = {runtime: load_model("efficientnet_lite0", runtime=runtime) for runtime in RUNTIMES}
    photos = preprocessed_photos(models["tflite"].info.preprocessing)
    pixels = np.stack(list(photos.values()))
    print(f"{len(photos)} real photos, preprocessed to {pixels.shape[1:]} uint8")

    print(f"{os.cpu_count()} CPUs; load average before: {load_average()}")
    rows = []
    for batch_size, repeats in ((args.batch_size, args.repeats), (1, args.single_repeats)):
        seconds = interleaved_seconds(models, batch_of(pixels, batch_size), args.warmup, repeats)
        keras, tflite = (images_per_second(seconds[runtime], batch_size) for runtime in RUNTIMES)
        for stat in ("median", "best"):
            rows.append([batch_size, stat, f"{keras[stat]:.1f}", f"{tflite[stat]:.1f}",
                         f"{tflite[stat] / keras[stat]:.2f}x"])
    print(f"load average after: {load_average()}")

    print("\n## Throughput of model.predict on pre-decoded uint8 batches (images/s)\n")
    print_table(["batch", "over calls", "Keras", "TFLite", "TFLite / Keras"], rows)

    cosines, same_top1 = agreement(*(models[runtime].predict(pixels) for runtime in RUNTIMES))
    print(f"\n## Keras vs TFLite agreement on the {len(photos)} photos\n")
    print_table(["measure", "value"], [
        ["embedding cosine, min", f"{cosines.min():.7f} ({list(photos)[int(cosines.argmin())]})"],
        ["1 - cosine, max", f"{1 - cosines.min():.1e}"],
        ["embedding cosine, mean", f"{cosines.mean():.7f}"],
        ["same top-1 class", f"{100 * same_top1:.0f}%"],
    ])


if __name__ == "__main__":
    main()
