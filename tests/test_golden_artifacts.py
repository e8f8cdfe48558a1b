"""A whole build's artifacts are the bytes pinned here, on any x86-64 CPU.

``catalog-index build`` (the real command, in its own process, local runner) indexes a
small catalog of real photos, and every file under the version's ``index/``,
``metadata/``, ``embeddings/``, ``text/``, ``changes/`` and ``errors/`` must have the
sha256 pinned below, as must the manifest's stable parts (counts, shards, model, space,
quality; not its times, paths or options). A change to the code that changes what a
build publishes fails here, naming the files; if the change is meant, pin the new
digests in the same commit and say why.

The digests hold on every x86-64 CPU because the build does no floating-point work whose
result depends on the CPU:

- **Images**: 150 views of 15 of scikit-image's sample photos (those it ships as PNG), cut
  to 32 x 32 by integer striding and written as PNG with stored (uncompressed) deflate
  blocks: the same bytes from any zlib (Pillow's bundled zlib-ng picks its compressor's
  code by the CPU), the same pixels from any decoder. 32 x 32 is the model's input size
  and the views are square, so preprocessing resizes nothing: fast_image_resize copies
  the pixels when the sizes are equal (``copy_image`` in its ``Resizer``) before any SIMD
  convolution could run. Every file's mtime is fixed (a local image's ``source_stamp``
  in ``embeddings/`` is its size and mtime), and the catalog lives at one fixed path
  (``image_uri`` in ``metadata/`` and ``errors/`` is the file's absolute path).
- **Model**: a ``.keras`` file written by the test (:func:`write_model`) whose arithmetic
  is exact in float32: integer pixels in (scale 1, offset 0), integer weights in
  {-1, 0, 1}, no bias, a ReLU; every partial sum is an integer below 2**24, so XNNPACK's
  kernels for any instruction set (FMA or not, any order of summation) give the same
  bits. Its bytes are the same each time (its sha256 is the fingerprint embeddings/
  records). It runs on TFLite (``--runtime tflite``: the same on a machine with a GPU,
  where ``auto`` would pick Keras). No class head: no labels, no softmax.
- **No fits**: ``--dims 0`` (no projection, whose fit goes through per-CPU BLAS and
  LAPACK kernels) and ``--caption-method labels`` (no caption head, no neighbour votes).
- **What is left is exact or correctly rounded**: unit length is NumPy's elementwise
  square, pairwise sum (plain C, the same order whatever SIMD the CPU has), square root
  and division; colors are divisions and comparisons; BM25's idf is Python's
  ``math.log``, rounded to float32. Annoy is compiled for the x86-64 baseline
  (tests/test_native.py); at 32 dimensions it splits nodes of more than 34 items, so the
  shards (42-59 items) have real trees. The recall gate's exact search is a float32
  matrix product whose BLAS kernel differs per CPU, in the last bits: it decides search_k
  and trees. Here an item's 10th and 11th nearest score at least 9.3e-6 apart, and a
  32-term dot product of unit vectors rounds by at most 32 x 2**-24 = 1.9e-6 in any
  order, so every CPU finds the same nearest 10 (the same recall, search_k and trees).

**Checked on other CPUs**: this build under QEMU user-mode (qemu-x86_64 7.2) on this AMD
EPYC (AVX-512) host, emulating Haswell-v4 (AVX2 and FMA, no AVX-512) and SandyBridge
(AVX only: no AVX2, no FMA), passed every test here (all 18 files and the manifest's
stable parts; model/model.tflite's sha256 too); about 45 s each. To repeat it::

    NPY_DISABLE_CPU_FEATURES=X86_V3 CATALOG_INDEX_GOLDEN_CPU=Haswell-v4 pytest tests/test_golden_artifacts.py
    OPENBLAS_CORETYPE=SandyBridge CATALOG_INDEX_GOLDEN_CPU=SandyBridge pytest tests/test_golden_artifacts.py

The variables work around the emulator, not the build: under QEMU 7.2 NumPy's AVX2
argsort (np.unique in the text index) segfaults on this catalog, though it sorts the same
arrays alone (so the Haswell run has NumPy on its SSE paths, and XNNPACK, OpenBLAS and
glibc on their AVX2 and FMA ones; an earlier 48-item version of this build passed
with NumPy's AVX2 paths on); and once TensorFlow is loaded, OpenBLAS takes the emulated
SandyBridge for a Haswell and runs an AVX2 kernel (illegal instruction), where without
TensorFlow it picks its SandyBridge kernel, as OPENBLAS_CORETYPE now makes it.

What the bytes do depend on is library versions: Parquet files name their writer's
pyarrow version (under another pyarrow the Parquet files are compared by their rows,
pinned too), text/ follows bm25s and NumPy's major version, and the model file's bytes
(and so its fingerprint) follow Keras and h5py: :data:`INPUTS` pins them, and a test says
so first when they differ.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from typing import Dict, List

import numpy as np
import pytest

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The catalog's images live at this fixed path: image_uri (metadata/, errors/) is the
# absolute path of each image, so the same catalog must be at the same place on every
# machine. A lock keeps two runs of this module from writing it at once.
CATALOG_DIR = "/tmp/catalog-index-golden"
MTIME_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z: every image's mtime
VERSION = "golden"
INPUT = 32  # the model's input size: every image is 32 x 32, so nothing is resized
EMBEDDING = 32  # Annoy splits a node of more than 34 items (32 + 2) at this width

# scikit-image's sample photos that ship as PNG, with the category the catalog gives them.
PHOTOS = {"astronaut": "people", "brick": "materials", "camera": "people", "cell": "science",
          "chelsea": "animals", "clock": "home", "coffee": "kitchen", "coins": "objects",
          "grass": "materials", "gravel": "materials", "immunohistochemistry": "science",
          "microaneurysms": "science", "moon": "space", "page": "print", "text": "print"}
BUILD_OPTIONS = ["--version-id", VERSION, "--num-shards", "3", "--dims", "0",
                 "--caption-method", "labels", "--runtime", "tflite", "--seed", "42",
                 "--max-failure-rate", "0.1"]
# CATALOG_INDEX_GOLDEN_CPU=<QEMU CPU model>: build on that emulated CPU (module docstring).
EMULATED_CPU = os.environ.get("CATALOG_INDEX_GOLDEN_CPU")

# What the build reads: the catalog folder (catalog.csv and the images, names and bytes)
# and the model file. Keras 3.15.1, h5py 3.14.0, scikit-image 0.26.0, NumPy 2.4.6.
INPUTS = {"catalog": "0c883dafc7bb7f25d3d0a9f32947794d63b92bed3cf40822e7cce0de455b25ed",
          "model": "b11ad50a6a9f281c70677cefd601c3ed042c7a1bfe09cd6fe4bbac2583f1f674"}

# Every artifact file of the version, as written with pyarrow 25.0.1, bm25s 0.3.16,
# NumPy 2.4.6, Annoy 1.17.3 (native/install_annoy.sh).
PINNED_PYARROW = "25.0.1"
FILES = {
    "changes/part-00000-of-00003.parquet":
        "956b14e812cb42b829118e84239f297ea455ef29d5ac18e50ad8ba2a9ecfc260",
    "changes/part-00001-of-00003.parquet":
        "d4b17276682dabbbbb8f1cb7e29016ec7dab69048994cfea9ffce5c437b0bea6",
    "changes/part-00002-of-00003.parquet":
        "21f8a749f7b2f62efb83ea9be22e2bf62ee889bc28fbe4f49a575e301451914f",
    "embeddings/part-00000-of-00003.parquet":
        "fe018a06fe93ab274331f52598e9d0809f95c7a1dc606f65aed0efb96349665a",
    "embeddings/part-00001-of-00003.parquet":
        "b7c3adff2ca536dbd17f817450a4cb7c5d17da8336f3787ac09aec9cd656abb6",
    "embeddings/part-00002-of-00003.parquet":
        "ed8a7705672886592aace16318f42ef8132b5eaa3f5bb70b387cfc85c8700287",
    "errors/part-00000-of-00001.parquet":
        "a35159ddd83d016df443a4510f8103e1a9258a7522be03408733cbb58d7d0cd4",
    "index/shard-00000-of-00003.ann":
        "b807509292883356a98eb6b839ffda1e4a14241bee8bf668bd05eb3c6d94cc20",
    "index/shard-00001-of-00003.ann":
        "d6c8ab2ad466391a40b05252fbd42237a7deb20c7a1a89b6ef558c82fc1161eb",
    "index/shard-00002-of-00003.ann":
        "e8075ed140d0f8865c23b5f722a028e7d3babad567d9ab0ac0e99e0c922e7268",
    "metadata/part-00000-of-00003.parquet":
        "a217df1fcc2b23f91b64d3bcf28431c2fe0cc1eb5fa4572411acbdd7f8f41b86",
    "metadata/part-00001-of-00003.parquet":
        "dbdebaf0356a211e94ad8aaa1162e270549a29692e56cabc4765f4abd0ce78e4",
    "metadata/part-00002-of-00003.parquet":
        "d927914dfd2da8367b343dd51665041045ce69834980e3989fe956662c72466f",
    "text/data.csc.index.npy":
        "c52df62eb51a97e7b7461414a5643740bb4707b3c6180d8e37874607af727f0f",
    "text/indices.csc.index.npy":
        "c36333b61cac08513799893e53f379d2a88d38a746bf0743c414d693bb506da5",
    "text/indptr.csc.index.npy":
        "796f9f39435a923a4a130fa6d6c0b3132c6bf5686fee26cda439d62e63bd8af6",
    "text/params.index.json":
        "84386d12eb01012daf3a5e869bfa229904b266eb01f6bc6b02717d62d7d64222",
    "text/vocab.index.json":
        "c5f0ca55c3e0b161471d3b8fc0ac6161fca9ea8c3947c2b6cd5df64cef7efc79",
}
# The Parquet files' rows (column names and values, :func:`rows_digest`), compared in
# place of their bytes under another pyarrow than PINNED_PYARROW.
PARQUET_ROWS = {
    "changes/part-00000-of-00003.parquet":
        "bfda7df38aa0606a9efc138dc7f04ee197765e872fc33f7913855a52e26b4bfc",
    "changes/part-00001-of-00003.parquet":
        "e6ff2f0566ab77841535db761a1762502774e2d6e01e0a8053981a4bce15b669",
    "changes/part-00002-of-00003.parquet":
        "a73d3e168008db4118c763bd589983f89f12a8dd4cf8df7ad5eb2da19e365445",
    "embeddings/part-00000-of-00003.parquet":
        "ff0998befbba4f12a0439d00336d5a1f5d7128c259e5830ca235c4d39d28aa8b",
    "embeddings/part-00001-of-00003.parquet":
        "367c261062d607e22fcfe567d89511f2eddaf1db85c3ba3208ba4978379ca519",
    "embeddings/part-00002-of-00003.parquet":
        "f397c8f11b3998d82e3c9c84d79b2abbb9a780e10fd44a37d704054639ef3cc7",
    "errors/part-00000-of-00001.parquet":
        "eefbe4687fa2148bc1651a04a88eb30f29447340d4bbc84ceaf1fbbeb57cdcb1",
    "metadata/part-00000-of-00003.parquet":
        "40d834cc01026eb2d65bca552e839873f5a917f7218d6230eef61177b70d6cdf",
    "metadata/part-00001-of-00003.parquet":
        "f1fb6d7a8f668008eb1d93f5a88b89043fbb42800bc0f50a72a3072d10ccaeda",
    "metadata/part-00002-of-00003.parquet":
        "d47c371fb637a091f5dfdc98552f1a5b26a248670fb0fcaa79c652c0a2d6a9cf",
}
ARTIFACT_FOLDERS = ("index", "metadata", "embeddings", "text", "changes", "errors")

FINGERPRINT = INPUTS["model"]
# The manifest's stable parts: what it says that does not change with the time, the
# machine or the paths (created_at, source, timings and pipeline_options are left out).
# The sha256 of each shard and text file is checked against the file itself instead.
MANIFEST = {
    "schema_version": 4, "version_id": VERSION,
    "model": {"name": "golden-exact", "fingerprint": FINGERPRINT, "input_size": 32,
              "embedding_dim": 32, "runtime": "tflite", "num_classes": 0,
              "preprocessing": {"input_size": 32, "fit": "crop", "scale": 1.0, "offset": 0.0,
                                "pad_color": [255, 255, 255]}},
    "index": {"library": "annoy", "library_version": "1.17.3", "metric": "angular",
              "seed": 42, "num_shards": 3, "dimension": 32, "space": "de66d8502b24b1f1",
              "space_changed": None, "n_trees": 16, "search_k": 160, "recall_target": 0.95,
              "shards": [{"shard": shard, "items": items, "bytes": size, "n_trees": 16,
                          "search_k": 160, "recall_at_10": recall, "recall_queries": items,
                          "index_file": f"index/shard-0000{shard}-of-00003.ann",
                          "metadata_file": f"metadata/part-0000{shard}-of-00003.parquet",
                          "embeddings_file": f"embeddings/part-0000{shard}-of-00003.parquet",
                          "changes_file": f"changes/part-0000{shard}-of-00003.parquet"}
                         for shard, items, size, recall in ((0, 42, 18900, 1.0),
                                                            (1, 59, 27300, 0.998305),
                                                            (2, 49, 26740, 1.0))]},
    "text_index": {"library": "bm25s", "documents": 150, "files": [
        {"file": "text/data.csc.index.npy", "bytes": 3088},
        {"file": "text/indices.csc.index.npy", "bytes": 3088},
        {"file": "text/indptr.csc.index.npy", "bytes": 448},
        {"file": "text/params.index.json", "bytes": 222},
        {"file": "text/vocab.index.json", "bytes": 459}]},
    "projection": None,
    # TensorFlow 2.21.0's converter; the same bytes on the emulated CPUs too.
    "query_model": {"file": "model/model.tflite", "format": "tflite", "bytes": 69604,
                    "sha256": "2a8fd1c504a243e62a201d0d692d5141e93c7f43532f3074af8af9bce2bcdf54",
                    "fingerprint": FINGERPRINT},
    "reuse": {"from_version": None, "full_build_reason": "no published version yet",
              "settings": {"schema_version": 4, "model_fingerprint": FINGERPRINT,
                           "embedding_dim": 32, "max_image_bytes": 52428800,
                           "max_pixels": 64000000}},
    "counts": {"input": 153, "indexed": 150, "failed": 2, "duplicate": 1,
               "failed_by_stage": {"decode": 1, "fetch": 1}, "reused": 0, "embedded": 150,
               "added": 150, "removed": 0, "changed": 0, "vector_changed": 0},
    "quality": {"ann_recall_at_10": 0.999333, "recall_queries": 150, "failure_rate": 0.013072,
                "rank_queries": 150, "ranked_share": 1.0, "label_column": "category",
                "label_queries": 150, "label_p_at_10": 0.156},
    "validation": {"passed": True, "problems": []},
}


# ----------------------------------------------------------------------------- inputs

def png(pixels: np.ndarray) -> bytes:
    """uint8 RGB [H, W, 3] as a PNG whose deflate stream is stored (uncompressed) blocks:
    the same bytes from any zlib."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\0" + pixels[row].tobytes() for row in range(height))  # filter: none
    blocks = []
    for start in range(0, len(raw), 65535):
        piece = raw[start:start + 65535]
        final = start + 65535 >= len(raw)
        blocks.append(struct.pack("<BHH", final, len(piece), len(piece) ^ 0xFFFF) + piece)
    deflate = b"\x78\x01" + b"".join(blocks) + struct.pack(">I", zlib.adler32(raw))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", deflate)
            + chunk(b"IEND", b""))


def views(photo: np.ndarray) -> Dict[str, np.ndarray]:
    """Ten 32 x 32 views of a photo by integer striding (no resampling): its centre square
    whole, and the nine tiles of a closer view."""
    side = min(photo.shape[:2])
    found = {}
    for size in (INPUT, 3 * INPUT):
        step = max(1, side // size)
        top, left = (photo.shape[0] - size * step) // 2, (photo.shape[1] - size * step) // 2
        square = photo[top:top + size * step:step, left:left + size * step:step]
        for row in range(size // INPUT):
            for column in range(size // INPUT):
                name = "whole" if size == INPUT else f"tile-{row}{column}"
                found[name] = square[row * INPUT:(row + 1) * INPUT,
                                     column * INPUT:(column + 1) * INPUT]
    return {name: np.ascontiguousarray(view) for name, view in found.items()}


def write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as stream:
        stream.write(data)
    os.utime(path, ns=(MTIME_NS, MTIME_NS))


def write_catalog(folder: str) -> None:
    """catalog.csv (item_id, image_uri, title, category) and its images under ``folder``:
    45 good images (a third untitled), a corrupt file, a missing one, a duplicate id."""
    import skimage.data

    rows = []
    for photo_name, category in PHOTOS.items():
        photo = getattr(skimage.data, photo_name)()
        photo = np.stack([photo] * 3, axis=-1) if photo.ndim == 2 else photo[..., :3]
        for number, (view, pixels) in enumerate(views(photo).items()):
            assert pixels.shape == (INPUT, INPUT, 3), (photo_name, view, pixels.shape)
            path = os.path.join(folder, "images", f"{photo_name}-{view}.png")
            write(path, png(pixels))
            title = "" if number % 3 == 2 else f"{photo_name.title()} ({view})"
            rows.append([f"{photo_name}-{view}", path, title, category])
    corrupt = os.path.join(folder, "images", "corrupt.png")
    write(corrupt, png(np.zeros((INPUT, INPUT, 3), np.uint8))[:60])  # cut inside IDAT
    rows.append(["corrupt", corrupt, "A broken file", "objects"])
    rows.append(["missing", os.path.join(folder, "images", "missing.png"), "Gone", "objects"])
    coffee = next(row for row in rows if row[0] == "coffee-whole")
    rows.append([coffee[0], coffee[1].replace("whole", "tile-11"), "Coffee again", "kitchen"])
    with open(os.path.join(folder, "catalog.csv"), "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["item_id", "image_uri", "title", "category"])
        writer.writerows(rows)


def write_model(path: str) -> None:
    """The exact model (module docstring): Conv2D(8, 4 x 4, stride 4) with ReLU, Flatten,
    Dense(64); weights in {-1, 0, 1}, no bias. Its largest partial sum is 512 x (48 x 255)
    < 2**24. Written byte-identically by benchmarks/million.py's normalization (fixed zip
    timestamps, date_saved and shared-object ids); its sidecar feeds it raw pixels."""
    import keras
    from keras import layers

    from benchmarks.million import _normalized_keras_file

    inputs = keras.Input((INPUT, INPUT, 3), name="pixels")
    x = layers.Conv2D(8, 4, strides=4, use_bias=False, activation="relu", name="patches")(inputs)
    x = layers.Flatten(name="grid")(x)
    outputs = layers.Dense(EMBEDDING, use_bias=False, name="embedding")(x)
    model = keras.Model(inputs, outputs, name="golden_exact")
    rng = np.random.default_rng(29)
    model.set_weights([rng.integers(-1, 2, tuple(weight.shape)).astype(np.float32)
                       for weight in model.weights])
    raw = path + ".unnormalized.keras"
    model.save(raw)
    _normalized_keras_file(raw, path)
    os.remove(raw)
    with open(path + ".json", "w") as stream:
        json.dump({"name": "golden-exact",
                   "preprocessing": {"input_size": INPUT, "fit": "crop", "scale": 1.0,
                                     "offset": 0.0}}, stream)


@contextlib.contextmanager
def catalog_lock():
    with open(CATALOG_DIR + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# ----------------------------------------------------------------------------- digests

def sha256(path: str) -> str:
    with open(path, "rb") as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def folder_digest(folder: str) -> str:
    """sha256 over a folder's files: relative names and bytes."""
    digest = hashlib.sha256()
    for root, _, names in sorted(os.walk(folder)):
        for name in sorted(names):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, folder).encode() + b"\0")
            with open(path, "rb") as stream:
                digest.update(stream.read())
    return digest.hexdigest()


def rows_digest(path: str) -> str:
    """sha256 of a Parquet file's column names and rows, whatever pyarrow wrote them."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    text = json.dumps({"columns": table.column_names, "rows": table.to_pylist()},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def artifact_files(version: str) -> List[str]:
    found = []
    for folder in ARTIFACT_FOLDERS:
        for root, _, names in os.walk(os.path.join(version, folder)):
            found.extend(os.path.relpath(os.path.join(root, name), version) for name in names)
    return sorted(found)


def differences(actual, expected, path="") -> List[str]:
    """Where ``actual`` differs from ``expected``, looking only at the keys ``expected``
    names: ["index.shards[1].items: 19, pinned 18", ...]."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        return [line for key, value in expected.items() for line in
                (differences(actual[key], value, f"{path}.{key}".lstrip("."))
                 if key in actual else [f"{path}.{key}".lstrip(".") + ": missing"])]
    if isinstance(expected, list) and isinstance(actual, list) and len(actual) == len(expected):
        return [line for number, (got, value) in enumerate(zip(actual, expected))
                for line in differences(got, value, f"{path}[{number}]")]
    return [] if actual == expected else [f"{path}: {actual!r}, pinned {expected!r}"]


# ----------------------------------------------------------------------------- the build

@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """-> (version folder, {input: sha256}) of the golden build, on this CPU or, with
    CATALOG_INDEX_GOLDEN_CPU, on that CPU emulated by QEMU."""
    launcher = []
    if EMULATED_CPU:
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            pytest.skip("CATALOG_INDEX_GOLDEN_CPU needs qemu-x86_64 (make emulator)")
        launcher = [qemu, "-cpu", EMULATED_CPU]
    work = tmp_path_factory.mktemp("golden")
    model = str(work / "model.keras")
    write_model(model)
    output = str(work / "index")
    command = [*launcher, sys.executable, "-m", "pipelines.cli", "build", "--catalog",
               os.path.join(CATALOG_DIR, "catalog.csv"), "--output", output, "--model", model,
               *BUILD_OPTIONS]
    env = {**os.environ, "PYTHONPATH": REPO, "TMPDIR": str(work)}
    with catalog_lock():
        shutil.rmtree(CATALOG_DIR, ignore_errors=True)
        write_catalog(CATALOG_DIR)
        inputs = {"catalog": folder_digest(CATALOG_DIR), "model": sha256(model)}
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=1800)
        shutil.rmtree(CATALOG_DIR, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return os.path.join(output, "versions", VERSION), inputs


def test_the_build_reads_the_inputs_the_digests_were_pinned_for(golden):
    _, inputs = golden
    changed = {name: digest for name, digest in inputs.items() if INPUTS[name] != digest}
    assert not changed, (
        f"the golden build's inputs are not those its digests were pinned for: {changed} "
        "(catalog: scikit-image's photos or this module's catalog; model: this module's "
        "model, or Keras / h5py writing other bytes for it); the artifacts will differ too")


def test_every_artifact_file_is_the_pinned_bytes(golden):
    import pyarrow

    version, _ = golden
    found = artifact_files(version)
    same_writer = pyarrow.__version__ == PINNED_PYARROW
    differ = []
    for name in sorted(set(found) & set(FILES)):
        if name.endswith(".parquet") and not same_writer:  # compare the rows instead
            digest, pinned = rows_digest(os.path.join(version, name)), PARQUET_ROWS[name]
        else:
            digest, pinned = sha256(os.path.join(version, name)), FILES[name]
        if digest != pinned:
            differ.append(f"{name}: {digest}")
    missing, extra = sorted(set(FILES) - set(found)), sorted(set(found) - set(FILES))
    assert not (differ or missing or extra), (
        f"the golden build's artifacts changed ({len(differ)} of {len(FILES)} files differ"
        + ("" if same_writer else f"; Parquet compared by rows_digest under pyarrow "
           f"{pyarrow.__version__}") + "):\n  differ (new digest): " + "\n    ".join(
               [""] + differ) + f"\n  missing: {missing}\n  not pinned: {extra}")


def test_the_manifest_says_what_it_said(golden):
    version, _ = golden
    with open(os.path.join(version, "manifest.json")) as stream:
        manifest = json.load(stream)
    changed = differences(manifest, MANIFEST)
    assert not changed, "the manifest's stable parts changed:\n  " + "\n  ".join(changed)
    named = {shard[key]: shard[digest] for shard in manifest["index"]["shards"]
             for key, digest in (("index_file", "sha256"), ("metadata_file", "metadata_sha256"),
                                 ("changes_file", "changes_sha256"))}
    named.update((entry["file"], entry["sha256"]) for entry in manifest["text_index"]["files"])
    wrong = [name for name, digest in named.items()
             if sha256(os.path.join(version, name)) != digest]
    assert not wrong, f"the manifest's sha256 of these files is not theirs: {wrong}"
