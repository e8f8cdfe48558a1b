"""``make demo``: write a sample catalog of real product images, build it, query it once,
and say where the version's report.html is and how to query it.

Fashion-MNIST (Debian package dataset-fashion-mnist) gives real, labelled product photos;
where it is not installed, the real photos shipped with scikit-image stand in.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import shlex
import sys

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


def load_fashion_mnist(split: str = "t10k"):
    """-> (images uint8 [N, 28, 28], labels uint8 [N]) from the Debian package's idx files."""
    with gzip.open(os.path.join(FASHION_MNIST_DIR, f"{split}-images-idx3-ubyte.gz")) as stream:
        images = np.frombuffer(stream.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(os.path.join(FASHION_MNIST_DIR, f"{split}-labels-idx1-ubyte.gz")) as stream:
        labels = np.frombuffer(stream.read(), np.uint8, offset=8)
    return images, labels


# scikit-image's sample photographs, where Fashion-MNIST is not installed.
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "clock", "moon", "page",
                 "brick", "coins", "grass", "gravel", "text")


def _rgb(array: np.ndarray) -> np.ndarray:
    return np.stack([array] * 3, axis=-1) if array.ndim == 2 else array[..., :3]


def sample_products(limit: int):
    """-> [(item_id, title, category, uint8 image)] of real product images."""
    if os.path.isdir(FASHION_MNIST_DIR):
        images, labels = load_fashion_mnist()
        return [(f"fmnist-{n:05d}", f"{FASHION_CLASSES[label]} #{n}", FASHION_CLASSES[label],
                 image) for n, (image, label) in enumerate(zip(images[:limit], labels[:limit]))]
    import skimage.data  # installed with the project's test extras (make installs them)

    print("dataset-fashion-mnist is not installed: using scikit-image's sample photos")
    return [(name, name.replace("_", " "), "photo", photo)
            for name, photo in [(name, _rgb(getattr(skimage.data, name)()))
                                for name in SAMPLE_PHOTOS][:limit]]


def write_sample_catalog(folder: str, limit: int) -> str:
    from PIL import Image

    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    catalog = os.path.join(folder, "catalog.csv")
    with open(catalog, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["item_id", "image_uri", "title", "category"])
        for item_id, title, category, image in sample_products(limit):
            path = os.path.join("images", f"{item_id}.png")
            Image.fromarray(image).save(os.path.join(folder, path))
            writer.writerow([item_id, path, title, category])
    return catalog


def nearest_neighbours(output_root: str, item_id: str, k: int = 5):
    """-> [(cosine, metadata row)] of the k items nearest to ``item_id`` in the published
    version, through the reader search teams use."""
    from search.index import PublishedIndex

    return [(hit.score, hit.metadata)
            for hit in PublishedIndex.open(output_root).query_item(item_id, k=k)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="out", help="index output root (default ./out)")
    parser.add_argument("--workdir", default="out/sample-catalog", help="where the catalog goes")
    parser.add_argument("--limit", type=int, default=2000, help="number of products (the "
                        "default is enough to learn the vectors' 256-d projection from)")
    args = parser.parse_args(argv)

    from pipelines.build_index import run

    catalog = write_sample_catalog(args.workdir, args.limit)
    print(f"sample catalog: {catalog}")
    status = run(["--catalog", catalog, "--output", args.output, "--num-shards", "4"])
    if status != 0:
        return status
    import pyarrow.csv

    first = pyarrow.csv.read_csv(catalog).to_pylist()[0]
    print(f"\nnearest neighbours of {first['item_id']} ({first['title']}):")
    for score, row in nearest_neighbours(args.output, first["item_id"]):
        print(f"  {score:6.3f}  {row['item_id']:<14} {row['title']:<22} caption: {row['caption']}")
    print()
    print("\n".join(next_steps(args.output, catalog, first)))
    return 0


def next_steps(output_root: str, catalog: str, first: dict) -> list:
    """Where the published version's report.html is, and queries to copy and paste: by
    image, by item and by text, against ``output_root``."""
    from catalog_index.schema import version_dir
    from search.index import PublishedIndex

    version = PublishedIndex.open(output_root).version_id
    report = os.path.join(version_dir(output_root, version), "report.html")
    command = os.path.join(os.path.dirname(sys.executable), "catalog-index")
    command = os.path.relpath(command) if os.path.exists(command) else \
        f"{sys.executable} -m pipelines.cli"
    query = f"{command} query --index {shlex.quote(output_root)}"
    image = os.path.join(os.path.dirname(catalog), first["image_uri"])
    return [f"report: {report}  (open it in a browser)",
            "query it (by image, by item, by text):",
            f"  {query} --image {shlex.quote(image)}",
            f"  {query} --item-id {shlex.quote(first['item_id'])}",
            f"  {query} --text {shlex.quote(first['category'].lower())}",
            "serve it (HTTP API and search page at http://127.0.0.1:8080/):",
            f"  {command} serve --index {shlex.quote(output_root)}"]


if __name__ == "__main__":
    sys.exit(main())
