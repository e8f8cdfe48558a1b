"""Retrieval and caption quality of the production model path on Fashion-MNIST.

Each of the 10,000 Fashion-MNIST test images (28x28 grayscale, light product on a black
background) is made into a real PNG file (RGB, as-is), then goes through exactly what
the pipeline does: ``preprocess_image(bytes, spec)``, the model (TFLite by default),
and :class:`LabelColorCaptioner` on the probabilities and the unpadded pixels.

Measured:

- leave-one-out precision@10 (cosine): for each image, the share of its 10 nearest other
  images that have its class; for the model's embeddings and for the raw 784 pixels
  (L2-normalized) as a baseline;
- caption family accuracy: how often the caption text names the image's product family
  (word lists below, made of names that exist among the ImageNet-1k classes);
- which caption labels each class gets most (a confusion summary).

Reproduce (about 1 minute on 2 idle CPU cores; ``--limit 1000`` for a quick run):

    cd /work/main && .venv/bin/python -m benchmarks.fashion_mnist_quality
"""

from __future__ import annotations

import argparse
import collections
import gzip
import io
import os
import re
import time
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np

from models.vectors import unit_length
from PIL import Image

DATASET_DIR = "/usr/share/datasets/fashion-mnist"
IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# Caption words that name each class's product family. Only names that exist among the
# model's ImageNet-1k class names (models.labels.imagenet_class_names) can ever appear in
# a caption, so the lists hold those: there is no "trouser", "pants", "jacket", "parka",
# "blouse", "jersey", "flip-flop", "handbag", "tote", "satchel" or plain "shoe" or "boot"
# class. "shoe store", "sleeping bag" and "punching bag" are not products of the family
# and are left out on purpose. A phrase matches as whole words, case-insensitive; a
# hyphen binds ("shirt" would not match inside "T-shirt"; no list relies on that).
FAMILY_WORDS: Dict[str, Sequence[str]] = {
    "T-shirt/top": ("T-shirt", "sweatshirt"),
    "Trouser": ("jeans",),
    "Pullover": ("sweatshirt", "cardigan"),
    "Dress": ("gown", "abaya", "kimono", "sarong", "hoop skirt", "miniskirt", "overskirt"),
    "Coat": ("fur coat", "lab coat", "trench coat", "cardigan"),
    "Sandal": ("sandal",),
    "Shirt": ("T-shirt", "sweatshirt"),
    "Sneaker": ("sneaker", "loafer"),
    "Bag": ("shoulder bag", "plastic shopping bag", "purse", "backpack", "wallet"),
    "Ankle boot": ("cowboy boot", "clog"),
}
NO_CONFIDENT_LABEL = "(none: fallback)"


# ----------------------------------------------------------------------------- data

def read_idx(path: str) -> np.ndarray:
    """An idx file (gzip'd): big-endian magic (0, 0, dtype 0x08 = uint8, ndim), dims, data."""
    with gzip.open(path, "rb") as stream:
        data = stream.read()
    if data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not a uint8 idx file (magic {data[:4]!r})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_test_set(dataset_dir: str, limit: int | None):
    images = read_idx(os.path.join(dataset_dir, IMAGES_FILE))
    labels = read_idx(os.path.join(dataset_dir, LABELS_FILE)).astype(np.int64)
    return images[:limit], labels[:limit]


def to_png_bytes(gray: np.ndarray) -> bytes:
    """A 28x28 grayscale array as the RGB PNG file a catalog would hold (colors as-is)."""
    buffer = io.BytesIO()
    Image.fromarray(gray, "L").convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- model pass

@dataclass
class ModelPass:
    """What the model and the captioner said about every image, with the time each took."""

    embeddings: List[np.ndarray] = field(default_factory=list)
    captions: list = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=lambda: collections.defaultdict(float))


def run_production_path(model, captioner, images: np.ndarray, batch_size: int) -> ModelPass:
    """PNG bytes -> preprocess_image -> model -> caption, batch by batch."""
    from models.preprocessing import preprocess_image

    result = ModelPass()
    for start in range(0, len(images), batch_size):
        tick = time.perf_counter()
        files = [to_png_bytes(gray) for gray in images[start:start + batch_size]]
        prepared = [preprocess_image(data, model.info.preprocessing) for data in files]
        pixels = np.stack([image.pixels for image in prepared])
        result.seconds["encode + preprocess"] += time.perf_counter() - tick

        tick = time.perf_counter()
        output = model.predict(pixels)
        result.seconds["model"] += time.perf_counter() - tick

        tick = time.perf_counter()
        result.embeddings.append(output.embeddings)
        result.captions.extend(captioner.caption(probabilities, image.content)
                               for probabilities, image in zip(output.probabilities, prepared))
        result.seconds["caption"] += time.perf_counter() - tick
        print(f"\r  {min(start + batch_size, len(images))}/{len(images)} images", end="",
              flush=True)
    print()
    return result


# ----------------------------------------------------------------------------- retrieval

def precision_at_k(unit_vectors: np.ndarray, labels: np.ndarray, k: int = 10,
                   chunk_rows: int = 1000) -> np.ndarray:
    """Leave-one-out precision@k per item under cosine similarity (vectors unit length).

    The N x N similarity matrix is computed ``chunk_rows`` rows at a time (a 1000 x 10,000
    float32 block is 40 MB), each item's own column set to -inf so it is never its own
    neighbour.
    """
    count = len(unit_vectors)
    precision = np.empty(count, dtype=np.float64)
    for start in range(0, count, chunk_rows):
        stop = min(start + chunk_rows, count)
        similarity = unit_vectors[start:stop] @ unit_vectors.T
        similarity[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        nearest = np.argpartition(-similarity, k, axis=1)[:, :k]
        precision[start:stop] = (labels[nearest] == labels[start:stop, None]).mean(axis=1)
    return precision


# ----------------------------------------------------------------------------- captions

def phrase_pattern(phrases: Sequence[str]) -> re.Pattern:
    """Whole-word, case-insensitive match of any phrase; letters, digits and '-' bind."""
    alternatives = "|".join(re.escape(phrase) for phrase in phrases)
    return re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])", re.IGNORECASE)


FAMILY_PATTERNS = {name: phrase_pattern(words) for name, words in FAMILY_WORDS.items()}


def names_family(caption_text: str, class_name: str) -> bool:
    return FAMILY_PATTERNS[class_name].search(caption_text) is not None


def caption_labels(caption, threshold: float) -> List[str]:
    """The labels the caption text shows (those at or above the captioner's threshold)."""
    shown = [name for name, score in caption.labels if score >= threshold]
    return shown or [NO_CONFIDENT_LABEL]


# ----------------------------------------------------------------------------- report

def per_class_mean(values: np.ndarray, labels: np.ndarray) -> List[float]:
    return [float(values[labels == index].mean()) for index in range(len(CLASS_NAMES))]


def print_table(header: Sequence[str], rows: Sequence[Sequence]) -> None:
    """A Markdown table, so the output can be pasted into docs/benchmarks.md."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def report(labels, embedding_precision, pixel_precision, family_hits, top1_hits,
           confident_shown, label_counts, k) -> None:
    print(f"\n## Leave-one-out precision@{k} (cosine), and caption family accuracy\n")
    columns = [per_class_mean(values, labels) for values in
               (embedding_precision, pixel_precision, family_hits, top1_hits, confident_shown)]
    rows = [[name] + [percent(column[index]) for column in columns]
            for index, name in enumerate(CLASS_NAMES)]
    rows.append(["**all**"] + [f"**{percent(values.mean())}**" for values in
                               (embedding_precision, pixel_precision, family_hits, top1_hits,
                                confident_shown)])
    print_table(["class", f"P@{k} embeddings", f"P@{k} raw pixels", "caption names family",
                 "top-1 label in family", "caption shows a label"], rows)

    print("\n## Labels the captions show most, per class (share of the class's images)\n")
    rows = []
    for index, name in enumerate(CLASS_NAMES):
        total = int((labels == index).sum())
        common = label_counts[index].most_common(5)
        rows.append([name, ", ".join(f"{label} {percent(count / total)}"
                                     for label, count in common)])
    print_table(["class", "most frequent caption labels"], rows)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-dir", default=DATASET_DIR)
    parser.add_argument("--limit", type=int, default=None,
                        help="use only the first N test images (default: all 10,000)")
    parser.add_argument("--runtime", default="tflite", choices=("keras", "tflite"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--k", type=int, default=10, help="neighbours for precision@k")
    return parser.parse_args()


def main() -> None:
    from models.captioner import LabelColorCaptioner
    from models.loader import load_model

    args = parse_args()
    started = time.perf_counter()
    images, labels = load_test_set(args.dataset_dir, args.limit)
    print(f"{len(images)} Fashion-MNIST test images; runtime {args.runtime}, "
          f"batch {args.batch_size}")

    tick = time.perf_counter()
    model = load_model("efficientnet_lite0", runtime=args.runtime)
    load_seconds = time.perf_counter() - tick
    captioner = LabelColorCaptioner(model.info.class_names)
    model_pass = run_production_path(model, captioner, images, args.batch_size)

    tick = time.perf_counter()
    embeddings = np.concatenate(model_pass.embeddings)
    embedding_precision = precision_at_k(embeddings, labels, args.k)
    pixel_precision = precision_at_k(unit_length(images.reshape(len(images), -1)), labels,
                                     args.k)
    knn_seconds = time.perf_counter() - tick

    captions = model_pass.captions
    family_hits = np.array([names_family(caption.text, CLASS_NAMES[label])
                            for caption, label in zip(captions, labels)], float)
    top1_hits = np.array([names_family(caption.labels[0][0], CLASS_NAMES[label])
                          for caption, label in zip(captions, labels)], float)
    shown_labels = [caption_labels(caption, captioner.threshold) for caption in captions]
    confident_shown = np.array([shown[0] != NO_CONFIDENT_LABEL for shown in shown_labels],
                               float)
    label_counts = collections.defaultdict(collections.Counter)
    for shown, label in zip(shown_labels, labels):
        label_counts[int(label)].update(shown)

    report(labels, embedding_precision, pixel_precision, family_hits, top1_hits,
           confident_shown, label_counts, args.k)
    print("\n## Time\n")
    timings = {"load model": load_seconds, **model_pass.seconds,
               f"precision@{args.k} (both)": knn_seconds}
    print_table(["step", "seconds"], [[step, f"{seconds:.1f}"] for step, seconds in
                                      timings.items()])
    print(f"\ntotal {time.perf_counter() - started:.1f} s for {len(images)} images "
          f"({len(images) / model_pass.seconds['model']:.1f} images/s in the model)")
    print("load average (1, 5, 15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg())
          + f" on {os.cpu_count()} CPUs (other processes skew the times, not the scores)")


if __name__ == "__main__":
    main()
