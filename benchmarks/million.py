"""A million items on one machine (issue 28): the pipeline's own cost, measured with a small
model, on a catalog of 1,000,000 distinct Fashion-MNIST variants.

    .venv/bin/python -m benchmarks.million catalog    --items 1000000  # PNGs + CSV
    .venv/bin/python -m benchmarks.million build      --items 100000   # full build, timed
    .venv/bin/python -m benchmarks.million build      --items 1000000
    .venv/bin/python -m benchmarks.million reader     --items 1000000  # open, p50/p99, recall@10
    .venv/bin/python -m benchmarks.million model-rate                  # small model vs Lite0
    .venv/bin/python -m benchmarks.million night      --items 1000000  # a 1%-changed night
    .venv/bin/python -m benchmarks.million table                       # every result so far

Every command takes ``--work DIR`` (default ``/tmp/catalog-index-million``); ``build`` and
``night`` take ``--build-options '...'`` for more build options (the same for a night as for
its base); results are
merged into ``DIR/results.json`` and printed as a table; each build's stdout, timestamped
progress lines, ``/usr/bin/time -v`` output and RSS samples are under ``DIR/runs/<name>/``.

**Catalog.** Item n is variant ``k = n // 70,000`` of Fashion-MNIST image ``n % 70,000``
(train + t10k of the Debian package ``dataset-fashion-mnist``): mirrored when k is odd,
shifted by up to 2 pixels in x and y (zero fill) as k grows, darkened by 3% per 50 variants.
Should two items still have the same pixels, the later one gets one corner pixel changed
(none needs it up to 1,005,000 items). Every item's PNG bytes are checked to differ
(sha256). 28x28 grayscale PNGs, 1,000 to a folder (``images/0042/fm-0042123.png``);
a CSV with item_id, image_uri (relative to the CSV), and title and category on half of the
rows (those whose crc32(item_id) is even), the other half empty. The plan for n items is a
prefix of the plan for more, so every catalog size shares one image tree; existing files
with the right bytes are kept (not rewritten, mtimes unchanged).

**Small model.** ``DIR/model/fashion-tiny-1280.keras`` (+ its sidecar ``.keras.json``):
two random ReLU convolutions on 32 px input, pooled to a 4x4 grid, and a random linear
map to 1,280 dimensions (L2-normalized), plus a random 1,000-way softmax named with
ImageNet's classes, so that labels, colors and captions cost and weigh what the default
model's do (the labels mean nothing). Weights come from a seeded NumPy generator and the
``.keras`` file is written byte-identically every time (fixed zip timestamps, ``date_saved``
and shared-object ids), so its fingerprint does not change between runs. A few MFLOPs per image
against EfficientNet-Lite0's 400: what is left is the pipeline.

**build --items N**: ``catalog-index build --catalog catalog-N.csv --output DIR/index-N
--version-id base --model <small model>``, default options otherwise, under
``/usr/bin/time -v``: exit status, wall, user + system CPU, peak RSS, items indexed
(manifest), shards, bytes per item of each artifact; the RSS of the whole process tree
sampled every second next to the build's progress lines, so that the peak can be placed.

**reader --items N**: the ``base`` version opened in a fresh process twice (the first
warms the page cache; the second is reported): open time, ``RssAnon`` after open and after
the queries, ``query_item`` (k=10) p50/p99 over 1,000 items, and recall@10 of those
answers against exact search over every indexed vector (cosine in the index's space,
vectors read back from the Annoy files chunk by chunk).

**model-rate**: builds of the catalog's first 200 and 2,000 images with the small model and
with the default model (efficientnet_lite0, TFLite), the faster of two runs each:
images/s, the marginal images/s and CPU ms per image (2,000 - 200 over the difference,
so that fixed costs cancel), plus each model's bare TFLite images/s on the same images and
the leave-one-out P@10 of its raw vectors by Fashion-MNIST class.

**night --items N**: from the published ``base`` of N items: 1% of the images replaced in
place (same path, other bytes), 0.5% added, 0.5% removed; built incrementally (default
options), then the same catalog built in full (``--full --projection-from`` base's
folder, the same version id, another root) and the index, metadata and embeddings files
compared by sha256. Then a "moved folder" night: the base catalog with every tenth image
folder hard-linked into ``moved/`` (same bytes, new URIs), built incrementally: how many
items were embedded and how many reused says whether reuse goes by content. The night's
wall is also given as a share of what Lite0 would need for N images (model-rate, measured
in the same command). The originals of the replaced images are moved aside and put back
afterwards (``os.replace``: same inode and mtime), LATEST is rolled back to ``base``, and
the night's versions and the full build's root are removed once measured (``--keep`` keeps
them).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
CLI = [PYTHON, "-m", "pipelines.cli"]  # this checkout's code, run from its root
DEFAULT_WORK = "/tmp/catalog-index-million"
SOURCES = 70_000  # Fashion-MNIST train + t10k
PER_FOLDER = 1_000
BASE_VERSION = "base"
DEFAULT_MODEL = "efficientnet_lite0"
SMALL_MODEL_NAME = "fashion-tiny-1280"
SMALL_INPUT = 32
EMBEDDING_DIM = 1280
RATE_SIZES = (200, 2000)
COMPARED = ("index", "metadata", "embeddings")  # artifacts a night must match a full build in
# Variant k: mirror when odd; shift (k // 2) % 25 of these (zero fill); 3% darker per 50.
SHIFTS = [(0, 0)] + sorted(((dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)
                            if (dx, dy) != (0, 0)), key=lambda d: (abs(d[0]) + abs(d[1]), d))


# ----------------------------------------------------------------------------- catalog

_IMAGES = None


def fashion_images() -> Tuple[np.ndarray, np.ndarray]:
    """(uint8 [70000, 28, 28], labels [70000]): train then t10k."""
    global _IMAGES
    if _IMAGES is None:
        from pipelines.demo import load_fashion_mnist

        train, train_labels = load_fashion_mnist("train")
        test, test_labels = load_fashion_mnist("t10k")
        _IMAGES = (np.concatenate([train, test]), np.concatenate([train_labels, test_labels]))
    return _IMAGES


def variant_pixels(source: int, k: int, bump: int = 0) -> np.ndarray:
    """Variant ``k`` of Fashion-MNIST image ``source``; ``bump`` > 0 changes pixel (0, 0)."""
    image = fashion_images()[0][source]
    if k % 2:
        image = image[:, ::-1]
    dx, dy = SHIFTS[(k // 2) % len(SHIFTS)]
    out = np.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    if k // 50:
        out = (out.astype(np.uint16) * (100 - 3 * (k // 50)) // 100).astype(np.uint8)
    if bump:
        out[0, 0] = (int(out[0, 0]) + 37 * bump) % 256
    return out


def _digest(pixels: np.ndarray) -> bytes:
    return hashlib.sha256(pixels.tobytes()).digest()


def plan_items(count: int) -> Tuple[np.ndarray, set]:
    """-> (bump per item, pixel digests of all): the first bump that makes each item's
    pixels differ from every earlier item's. A plan is a prefix of any longer plan."""
    bumps = np.zeros(count, np.uint8)
    seen = set()
    for n in range(count):
        source, k = n % SOURCES, n // SOURCES
        bump = 0
        digest = _digest(variant_pixels(source, k))
        while digest in seen:
            bump += 1
            digest = _digest(variant_pixels(source, k, bump))
        bumps[n] = bump
        seen.add(digest)
    return bumps, seen


def item_id(n: int) -> str:
    return f"fm-{n:07d}"


def image_path(n: int, top: str = "images") -> str:
    """Relative to the catalog folder: 1,000 images a folder."""
    return f"{top}/{n // PER_FOLDER:04d}/{item_id(n)}.png"


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _write_images(job) -> Tuple[int, bytes]:
    """Write each (path, source, k, bump) unless the file already has those bytes;
    -> (files written, the sha256 of every file's bytes, concatenated)."""
    written, digests = 0, []
    for path, source, k, bump in job:
        data = png_bytes(variant_pixels(source, k, bump))
        try:
            with open(path, "rb") as stream:
                same = stream.read() == data
        except FileNotFoundError:
            same = False
        if not same:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "wb") as stream:
                stream.write(data)
            os.replace(path + ".tmp", path)
            written += 1
        digests.append(hashlib.sha256(data).digest())
    return written, b"".join(digests)


def write_images(jobs: Iterable[tuple], processes: Optional[int] = None) -> Tuple[int, List[bytes]]:
    """``jobs``: (path, source, k, bump) each, written over the machine's cores (forked
    workers share the Fashion-MNIST arrays), a thousand at a time, never all of them in
    memory at once; -> (files written, sha256 of each file, in order)."""
    fashion_images()
    jobs = iter(jobs)
    written, digests = 0, []
    with multiprocessing.get_context("fork").Pool(processes or os.cpu_count() or 1) as pool:
        while True:
            chunks = [chunk for chunk in (list(itertools.islice(jobs, PER_FOLDER))
                                          for _ in range(64)) if chunk]
            if not chunks:
                break
            for count, joined in pool.map(_write_images, chunks):
                written += count
                digests.extend(joined[start:start + 32] for start in range(0, len(joined), 32))
    return written, digests


def has_text(n: int) -> bool:
    return zlib.crc32(item_id(n).encode()) % 2 == 0


def catalog_row(n: int, top: str = "images") -> list:
    from pipelines.demo import FASHION_CLASSES

    if not has_text(n):
        return [item_id(n), image_path(n, top), "", ""]
    category = FASHION_CLASSES[fashion_images()[1][n % SOURCES]]
    return [item_id(n), image_path(n, top), f"{category} #{n}", category]


def write_csv(path: str, rows) -> str:
    with open(path + ".tmp", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["item_id", "image_uri", "title", "category"])
        writer.writerows(rows)
    os.replace(path + ".tmp", path)
    return path


def disk_usage(folder: str) -> Dict[str, int]:
    """Bytes of the files (apparent size) and bytes the filesystem spends on them (du)."""
    def du(*flags):
        done = subprocess.run(["du", "-s", "-B1", *flags, folder], capture_output=True,
                              text=True, check=True)
        return int(done.stdout.split()[0])

    return {"apparent_bytes": du("--apparent-size"), "disk_bytes": du()}


def write_catalog(work: str, count: int) -> dict:
    """The first ``count`` items as PNGs and ``catalog-<count>.csv``; -> what it took."""
    folder = os.path.join(work, "catalog")
    started = time.perf_counter()
    bumps, _ = plan_items(count)
    planned = time.perf_counter() - started
    jobs = ((os.path.join(folder, image_path(n)), n % SOURCES, n // SOURCES, int(bumps[n]))
            for n in range(count))
    written, digests = write_images(jobs)
    distinct = len(set(digests))
    del digests
    if distinct != count:
        raise RuntimeError(f"{count - distinct} items share their bytes with another")
    path = write_csv(os.path.join(folder, f"catalog-{count}.csv"),
                     (catalog_row(n) for n in range(count)))
    seconds = time.perf_counter() - started
    result = {"items": count, "csv": path, "written": written, "kept": count - written,
              "distinct_sha256": distinct, "bumped": int(np.count_nonzero(bumps)),
              "with_title": sum(has_text(n) for n in range(count)),
              "plan_s": round(planned, 1), "seconds": round(seconds, 1),
              "processes": os.cpu_count(), **disk_usage(os.path.join(folder, "images"))}
    log(f"catalog of {count:,}: {written:,} PNGs written, {count - written:,} kept, "
        f"{distinct:,} distinct sha256, {result['bumped']} corner-bumped, in {seconds:.0f} s "
        f"({os.cpu_count()} processes); images/ holds {result['apparent_bytes'] / 1e6:,.0f} MB "
        f"of files, {result['disk_bytes'] / 1e6:,.0f} MB on disk (all sizes written so far)")
    return result


# ----------------------------------------------------------------------------- small model

def _small_keras_model(seed: int = 1280):
    import keras
    from keras import layers

    inputs = keras.Input((SMALL_INPUT, SMALL_INPUT, 3), name="pixels")
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.AveragePooling2D(2, name="pool1")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.AveragePooling2D(4, name="pool2")(x)  # a 4x4 grid: where things are
    x = layers.Flatten(name="grid")(x)
    features = layers.Dense(EMBEDDING_DIM, name="features")(x)
    embedding = layers.UnitNormalization(axis=-1, name="embedding", dtype="float32")(features)
    logits = layers.Dense(1000, name="logits")(features)
    probabilities = layers.Softmax(name="probabilities", dtype="float32")(logits)
    model = keras.Model(inputs, {"embedding": embedding, "probabilities": probabilities},
                        name=SMALL_MODEL_NAME.replace("-", "_"))
    rng = np.random.default_rng(seed)
    weights = []
    for weight in model.weights:
        shape = tuple(weight.shape)
        if len(shape) == 1:  # biases: the convolutions' small and random, the rest zero
            bias = rng.normal(0.0, 0.05, shape) if weight.path.startswith("conv") \
                else np.zeros(shape)
            weights.append(bias.astype(np.float32))
        else:  # He-normal on the fan in
            fan_in = int(np.prod(shape[:-1]))
            weights.append(rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32))
    model.set_weights(weights)
    return model


def _normalized_keras_file(source: str, target: str) -> None:
    """``source`` rewritten with fixed zip timestamps, date_saved and shared-object ids:
    the same bytes for the same weights."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in sorted(old.infolist(), key=lambda info: info.filename):
            data = old.read(info.filename)
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata["date_saved"] = "2026-01-01@00:00:00"
                data = json.dumps(metadata, sort_keys=True).encode()
            elif info.filename == "config.json":  # Python id()s of shared objects: renumber
                numbers: Dict[bytes, str] = {}
                data = re.sub(rb'"shared_object_id": (\d+)', lambda found: b'"shared_object_id": '
                              + numbers.setdefault(found[1], str(len(numbers) + 1)).encode(),
                              data)
            entry = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_STORED
            new.writestr(entry, data)


def ensure_small_model(work: str) -> str:
    """The small model's .keras file and sidecar (written once; the same bytes each time)."""
    folder = os.path.join(work, "model")
    path = os.path.join(folder, f"{SMALL_MODEL_NAME}.keras")
    if os.path.exists(path) and os.path.exists(path + ".json"):
        return path
    os.makedirs(folder, exist_ok=True)
    from models.labels import imagenet_class_names

    raw = path + ".unnormalized.keras"
    _small_keras_model().save(raw)
    _normalized_keras_file(raw, path + ".tmp")
    os.remove(raw)
    os.replace(path + ".tmp", path)
    sidecar = {"name": SMALL_MODEL_NAME,
               "preprocessing": {"input_size": SMALL_INPUT, "fit": "auto",
                                 "scale": 1.0 / 255.0, "offset": 0.0},
               "class_names": imagenet_class_names()}
    with open(path + ".json", "w") as stream:
        json.dump(sidecar, stream)
    log(f"small model written: {path} (sha256 {sha256_of(path)[:16]})")
    return path


# ----------------------------------------------------------------------------- timed runs

def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _process_tree(root_pid: int) -> List[int]:
    children: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stream:
                stat = stream.read()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(parent, []).append(int(name))
    tree, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as stream:
            for line in stream:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _load1() -> float:
    with open("/proc/loadavg") as stream:
        return float(stream.read().split()[0])


def _time_v(text: str, label: str) -> Optional[str]:
    found = re.search(rf"^\s*{re.escape(label)}: (.*)$", text, re.MULTILINE)
    return found[1].strip() if found else None


def timed(command: Sequence[str], work: str, name: str, interval: float = 1.0) -> dict:
    """Run ``command`` under /usr/bin/time -v, sampling the RSS of its process tree every
    ``interval`` s and timestamping its output lines; everything lands in runs/<name>/."""
    folder = os.path.join(work, "runs", name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    time_file = os.path.join(folder, "time-v.txt")
    started = time.monotonic()
    process = subprocess.Popen(["/usr/bin/time", "-v", "-o", time_file, *command], cwd=HERE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               bufsize=1)
    lines: List[tuple] = []

    def drain(stream, tag):
        for line in stream:
            lines.append((round(time.monotonic() - started, 1), tag, line.rstrip("\n")))
            if tag == "err" and line.startswith("progress:"):
                log(f"  {name}: {line.strip()}")

    readers = [threading.Thread(target=drain, args=(process.stdout, "out"), daemon=True),
               threading.Thread(target=drain, args=(process.stderr, "err"), daemon=True)]
    for reader in readers:
        reader.start()
    samples = []
    while process.poll() is None:
        pids = _process_tree(process.pid)
        sizes = [_rss_kb(pid) for pid in pids]
        samples.append((round(time.monotonic() - started, 1), sum(sizes), max(sizes),
                        len(pids), _load1()))
        time.sleep(interval)
    wall = time.monotonic() - started
    for reader in readers:
        reader.join()
    try:
        with open(time_file) as stream:
            time_v = stream.read()
    except FileNotFoundError:
        time_v = ""
    with open(os.path.join(folder, "rss.csv"), "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["seconds", "tree_rss_kb", "largest_process_rss_kb", "processes",
                         "load1"])
        writer.writerows(samples)
    with open(os.path.join(folder, "output.txt"), "w") as stream:
        stream.writelines(f"{t:8.1f} {tag} {text}\n" for t, tag, text in lines)
    peak = max(samples, key=lambda sample: sample[1]) if samples else (0.0, 0, 0, 0, 0.0)
    progress = [(t, text) for t, tag, text in lines if text.startswith("progress:")]
    before_peak = [text for t, text in progress if t <= peak[0]]
    max_rss_kb = _time_v(time_v, "Maximum resident set size (kbytes)")
    user, system = (_time_v(time_v, f"{kind} time (seconds)") for kind in ("User", "System"))
    return {"command": " ".join(command), "exit": process.returncode,
            "wall_s": round(wall, 1),
            "cpu_s": round(float(user or 0) + float(system or 0), 1),
            "peak_rss_kb": int(max_rss_kb) if max_rss_kb else None,
            "sampled_peak_tree_rss_kb": peak[1], "sampled_peak_at_s": peak[0],
            "progress_before_peak": before_peak[-1] if before_peak else None,
            "progress_lines": len(progress),
            "load1_mean": round(float(np.mean([s[4] for s in samples])), 2) if samples else None,
            "stdout_first_line": next((text for _, tag, text in lines if tag == "out"), None),
            "stderr_tail": [text for _, tag, text in lines if tag == "err"][-5:],
            "run_folder": folder}


def version_folder(root: str, version: str) -> str:
    return os.path.join(root, "versions", version)


def read_manifest(root: str, version: str) -> Optional[dict]:
    from catalog_index import versions

    try:
        return versions.read_manifest(root, version)
    except FileNotFoundError:
        return None


def artifact_bytes(folder: str) -> Dict[str, int]:
    """Bytes of each top-level artifact folder of a version."""
    sizes: Dict[str, int] = {}
    for top in sorted(os.listdir(folder)):
        path = os.path.join(folder, top)
        if os.path.isdir(path):
            sizes[top] = sum(os.path.getsize(os.path.join(base, name))
                             for base, _, names in os.walk(path) for name in names)
    return sizes


def build(catalog: str, root: str, version: str, work: str, name: str, model: str,
          *extra: str) -> dict:
    """``catalog-index build`` timed; -> the run's figures and the manifest's."""
    command = [*CLI, "build", "--catalog", catalog, "--output", root, "--version-id", version,
               "--model", model, *extra]
    log(f"{name}: {' '.join(command[2:])}")
    run = timed(command, work, name)
    manifest = read_manifest(root, version)
    if manifest:
        counts = manifest["counts"]
        sizes = artifact_bytes(version_folder(root, version))
        indexed = counts["indexed"]
        run.update({"counts": counts, "shards": len(manifest["index"]["shards"]),
                    "index_dimension": manifest["index"].get("dimension"),
                    "items_per_s": round(indexed / run["wall_s"], 1),
                    "quality": manifest.get("quality"),
                    "projection_origin": (manifest.get("projection") or {}).get("origin"),
                    "artifact_bytes": sizes,
                    "artifact_bytes_per_item": {key: round(value / indexed)
                                                for key, value in sizes.items()} if indexed else {}})
    log(f"{name}: exit {run['exit']}, {run['wall_s']:.0f} s wall, peak RSS "
        f"{(run['peak_rss_kb'] or 0) / 2**20:.2f} GB, {run.get('counts')}")
    return run


# ----------------------------------------------------------------------------- results

def results_path(work: str) -> str:
    return os.path.join(work, "results.json")


def load_results(work: str) -> dict:
    try:
        with open(results_path(work)) as stream:
            return json.load(stream)
    except FileNotFoundError:
        return {}


def save_result(work: str, section: str, key: str, value: dict) -> None:
    results = load_results(work)
    value = {**value, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "commit": _commit(), "cores": os.cpu_count()}
    results.setdefault(section, {})[key] = value
    with open(results_path(work) + ".tmp", "w") as stream:
        json.dump(results, stream, indent=1, sort_keys=True)
    os.replace(results_path(work) + ".tmp", results_path(work))


def _commit() -> str:
    done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=HERE,
                          capture_output=True, text=True)
    return done.stdout.strip()


# ----------------------------------------------------------------------------- build

def index_root(work: str, items: int) -> str:
    return os.path.join(work, f"index-{items}")


def run_build(args) -> dict:
    catalog = write_catalog(args.work, args.items)
    save_result(args.work, "catalogs", str(args.items), catalog)
    model = ensure_small_model(args.work)
    root = index_root(args.work, args.items)
    shutil.rmtree(root, ignore_errors=True)
    result = build(catalog["csv"], root, BASE_VERSION, args.work, f"build-{args.items}", model,
                   *shlex.split(args.build_options))
    save_result(args.work, "builds", str(args.items), result)
    return result


# ----------------------------------------------------------------------------- reader

def _self_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field)).split()[1])


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def exact_top_k(index, queries: np.ndarray, own: np.ndarray, k: int = 10,
                chunk: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-k by cosine of unit ``queries`` [Q, d] over every vector of ``index``
    (read from its Annoy files ``chunk`` at a time), each query's own item (``own``, global
    ids) left out. -> (scores [Q, k], global ids [Q, k]); global id = shard << 32 | annoy id."""
    best_scores = np.full((len(queries), k), -np.inf, np.float32)
    best_ids = np.full((len(queries), k), -1, np.int64)
    for number, shard in enumerate(index.shards):
        count = shard.annoy.get_n_items()
        for start in range(0, count, chunk):
            ids = np.arange(start, min(start + chunk, count))
            vectors = _unit_rows(np.array([shard.annoy.get_item_vector(int(i)) for i in ids],
                                          np.float32))
            scores = queries @ vectors.T
            global_ids = (number << 32) | ids
            scores[own[:, None] == global_ids[None, :]] = -np.inf
            take = min(k, len(ids))
            top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
            merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], 1)
            merged_ids = np.concatenate([best_ids, global_ids[top]], 1)
            keep = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
            best_scores = np.take_along_axis(merged_scores, keep, 1)
            best_ids = np.take_along_axis(merged_ids, keep, 1)
    return best_scores, best_ids


def reader_probe(root: str, version: str, queries: int, recall: bool = True,
                 seed: int = 0) -> dict:
    """Open ``version`` of ``root``, time ``queries`` item queries, then (``recall``) their
    recall@10 against exact search. Run in a fresh process."""
    from search import PublishedIndex

    before = _self_kb("RssAnon:")
    started = time.perf_counter()
    index = PublishedIndex.open(root, version=version,
                                cache_dir=os.path.join(root, ".reader-cache"))
    open_s = time.perf_counter() - started
    anon_after_open = _self_kb("RssAnon:")
    rng = np.random.default_rng(seed)
    sizes = [shard.annoy.get_n_items() for shard in index.shards]
    picks = []  # (global id, item_id)
    while len(picks) < queries:
        shard = int(rng.integers(len(sizes)))
        if sizes[shard]:
            row = int(rng.integers(sizes[shard]))
            picks.append(((shard << 32) | row, index.shards[shard].item_ids[row].as_py()))
    timings, answers = [], []
    for _, item in picks:
        started = time.perf_counter()
        hits = index.query_item(item, k=10)
        timings.append((time.perf_counter() - started) * 1000)
        answers.append([hit.item_id for hit in hits])
    result = {"items": len(index), "shards": len(index.shards), "dimension": index.dimension,
              "open_s": round(open_s, 3),
              "rss_anon_mb_before_open": before // 1024,
              "rss_anon_mb_after_open": anon_after_open // 1024,
              "rss_anon_mb_after_queries": _self_kb("RssAnon:") // 1024,
              "rss_mb_after_queries": _self_kb("VmRSS:") // 1024,
              "queries": len(picks),
              "item_query_ms_p50": round(float(np.percentile(timings, 50)), 3),
              "item_query_ms_p99": round(float(np.percentile(timings, 99)), 3)}
    if not recall:
        return result
    started = time.perf_counter()
    vectors = _unit_rows(np.array([index.vector(item) for _, item in picks], np.float32))
    own = np.array([global_id for global_id, _ in picks], np.int64)
    exact_scores, exact_ids = exact_top_k(index, vectors, own)
    exact_s = time.perf_counter() - started
    name = lambda global_id: index.shards[global_id >> 32].item_ids[  # noqa: E731
        global_id & 0xFFFFFFFF].as_py()
    by_id, with_ties = [], []
    for q, hits in enumerate(answers):
        exact = {name(int(global_id)) for global_id in exact_ids[q]}
        by_id.append(len(exact & set(hits)) / 10)
        # A hit as near as the exact 10th counts too (items at the same distance).
        hit_scores = [float(vectors[q] @ _unit_rows(index.vector(hit)[None])[0]) for hit in hits]
        with_ties.append(min(10, sum(score >= exact_scores[q, -1] - 1e-5
                                     for score in hit_scores)) / 10)
    return {**result, "recall_at_10": round(float(np.mean(by_id)), 4),
            "recall_at_10_ties_counted": round(float(np.mean(with_ties)), 4),
            "exact_search_s": round(exact_s, 1),
            "rss_anon_mb_after_exact_search": _self_kb("RssAnon:") // 1024}


def run_reader(args) -> dict:
    root = index_root(args.work, args.items)
    if not read_manifest(root, BASE_VERSION):
        sys.exit(f"{root}: no version {BASE_VERSION!r}; run: build --items {args.items}")
    command = [PYTHON, "-m", "benchmarks.million", "reader-probe", root,
               "--version", BASE_VERSION, "--queries", str(args.queries)]
    runs = []
    for attempt, extra in (("first (warms the page cache)", ["--no-recall"]), ("warm", [])):
        log(f"reader, {attempt}: {' '.join(command[2:] + extra)}")
        done = subprocess.run(command + extra, capture_output=True, text=True, cwd=HERE)
        if done.returncode:
            sys.exit(f"reader probe failed: {done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        log(f"  {runs[-1]}")
    result = {**runs[1], "first_open_s": runs[0]["open_s"]}
    save_result(args.work, "readers", str(args.items), result)
    return result


# ----------------------------------------------------------------------------- model rate

def bare_rate(model_spec: str, images: Sequence[bytes], labels: np.ndarray, batch: int = 4,
              passes: int = 3) -> dict:
    """The model's TFLite images/s on pre-decoded batches (the best of ``passes``), and
    the leave-one-out P@10 of its raw vectors against the images' ``labels`` (exact
    cosine): whether its neighbours mean something."""
    from models.loader import load_model
    from models.preprocessing import preprocess_image

    model = load_model(model_spec, "tflite")
    pixels = np.stack([preprocess_image(data, model.info.preprocessing).pixels
                       for data in images])
    model.predict(pixels[:batch])
    best, vectors = 0.0, []
    for _ in range(passes):
        started = time.perf_counter()
        vectors = [model.predict(pixels[start:start + batch]).embeddings
                   for start in range(0, len(pixels), batch)]
        best = max(best, len(pixels) / (time.perf_counter() - started))
    vectors = np.concatenate(vectors)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1)[:, :10]
    p_at_10 = float((labels[nearest] == labels[:, None]).mean())
    return {"model": model.info.name, "bare_images_per_s": round(best, 1), "batch": batch,
            "threads": model.threads, "input_size": model.info.preprocessing.input_size,
            "p_at_10_raw": round(p_at_10, 3)}


def measure_model_rate(work: str, repeats: int = 2) -> dict:
    """Builds of 200 and 2,000 of the catalog's images with each model (the fastest of
    ``repeats``), and each model's bare rate: images/s, marginal images/s and CPU per
    image, and the fixed cost."""
    size = max(RATE_SIZES)
    write_catalog(work, size)
    small = ensure_small_model(work)
    folder = os.path.join(work, "catalog")
    catalogs = {n: write_csv(os.path.join(folder, f"rate-{n}.csv"),
                             (catalog_row(i) for i in range(n))) for n in RATE_SIZES}
    result = {}
    for label, spec in (("small", small), ("default", DEFAULT_MODEL)):
        done = subprocess.run([PYTHON, "-m", "benchmarks.million", "bare-rate", spec,
                               "--work", work], capture_output=True, text=True, cwd=HERE)
        if done.returncode:
            sys.exit(f"bare-rate {spec} failed: {done.stderr[-3000:]}")
        entry = json.loads(done.stdout.strip().splitlines()[-1])
        for n in RATE_SIZES:
            root = os.path.join(work, "rate", f"{label}-{n}")
            runs = []
            for attempt in range(repeats):  # the fastest: this machine is shared
                shutil.rmtree(root, ignore_errors=True)
                runs.append(build(catalogs[n], root, "rate", work,
                                  f"rate-{label}-{n}-{attempt + 1}", spec))
                if runs[-1]["exit"]:
                    sys.exit(f"rate build failed: {runs[-1]['stderr_tail']}")
            entry[f"build_{n}_wall_s"] = min(run["wall_s"] for run in runs)
            entry[f"build_{n}_cpu_s"] = min(run["cpu_s"] for run in runs)
            entry[f"build_{n}_peak_rss_kb"] = max(run["peak_rss_kb"] for run in runs)
            entry[f"build_{n}_walls_s"] = [run["wall_s"] for run in runs]
            shutil.rmtree(root, ignore_errors=True)
        small_n, large_n = RATE_SIZES
        entry["build_images_per_s"] = round(large_n / entry[f"build_{large_n}_wall_s"], 1)
        marginal = (large_n - small_n) / max(entry[f"build_{large_n}_wall_s"]
                                             - entry[f"build_{small_n}_wall_s"], 1e-3)
        entry["marginal_images_per_s"] = round(marginal, 1)
        entry["fixed_s"] = round(entry[f"build_{small_n}_wall_s"] - small_n / marginal, 1)
        entry["marginal_cpu_ms_per_image"] = round(
            1000 * (entry[f"build_{large_n}_cpu_s"] - entry[f"build_{small_n}_cpu_s"])
            / (large_n - small_n), 2)
        result[label] = entry
        log(f"model-rate {label}: {entry}")
    result["default_over_small_marginal"] = round(
        result["default"]["marginal_images_per_s"] / result["small"]["marginal_images_per_s"], 3)
    return result


def run_model_rate(args) -> dict:
    result = measure_model_rate(args.work)
    save_result(args.work, "model_rate", "latest", result)
    return result


def default_model_seconds(rate: dict, items: int) -> float:
    """What the default model's build would take for ``items`` images, from model-rate."""
    return rate["default"]["fixed_s"] + items / rate["default"]["marginal_images_per_s"]


# ----------------------------------------------------------------------------- night

def night_changes(items: int) -> Tuple[List[int], List[int], List[int]]:
    """-> (replaced, added, removed) item numbers: 1%, 0.5% and 0.5% of ``items``."""
    rng = np.random.default_rng(7)
    changed = rng.choice(items, size=items // 50, replace=False)
    replaced = sorted(int(n) for n in changed[: items // 100])
    removed = sorted(int(n) for n in changed[items // 100:])
    added = list(range(items, items + items // 200))
    return replaced, added, removed


def backup_folder(work: str) -> str:
    return os.path.join(work, "catalog", "night-originals")


def restore_originals(work: str) -> int:
    """Put back the images a night replaced (same inode, same mtime as before)."""
    folder, restored = backup_folder(work), 0
    for base, _, names in os.walk(folder):
        for name in names:
            original = os.path.join(work, "catalog", os.path.relpath(os.path.join(base, name),
                                                                      folder))
            os.replace(os.path.join(base, name), original)
            restored += 1
    shutil.rmtree(folder, ignore_errors=True)
    return restored


def rollback(root: str, version: str) -> None:
    latest = open(os.path.join(root, "LATEST")).read().strip()
    if latest != version:
        subprocess.run([*CLI, "rollback", "--index", root, "--version", version], cwd=HERE,
                       check=True, capture_output=True)


def compare_artifacts(first: str, second: str) -> dict:
    """sha256 of every file under index/, metadata/ and embeddings/ of two version folders."""
    result = {}
    for top in COMPARED:
        names = sorted(set(os.listdir(os.path.join(first, top)))
                       | set(os.listdir(os.path.join(second, top))))
        differ = [name for name in names
                  if not (os.path.exists(os.path.join(first, top, name))
                          and os.path.exists(os.path.join(second, top, name))
                          and sha256_of(os.path.join(first, top, name))
                          == sha256_of(os.path.join(second, top, name)))]
        result[top] = {"files": len(names), "differ": differ[:20], "differing": len(differ)}
    return result


def replace_images(work: str, items: int, replaced: List[int], added: List[int]) -> dict:
    """Write the night's images: each replaced one in place (its original moved aside),
    with the pixels of another image, distinct from every other item's; added ones at
    their own paths."""
    folder = os.path.join(work, "catalog")
    bumps, seen = plan_items(items + len(added))
    jobs = [(os.path.join(folder, image_path(n)), n % SOURCES, n // SOURCES, int(bumps[n]))
            for n in added]
    for n in replaced:
        source, k, bump = (n % SOURCES + SOURCES // 2 + 17) % SOURCES, n // SOURCES, 0
        while _digest(variant_pixels(source, k, bump)) in seen:
            bump += 1
        seen.add(_digest(variant_pixels(source, k, bump)))
        path = os.path.join(folder, image_path(n))
        backup = os.path.join(backup_folder(work), image_path(n))
        os.makedirs(os.path.dirname(backup), exist_ok=True)
        os.replace(path, backup)
        jobs.append((path, source, k, bump))
    written, digests = write_images(jobs)
    return {"written": written, "distinct_sha256": len(set(digests))}


def link_moved(work: str, numbers: Sequence[int]) -> int:
    """Hard links of these items' images under moved/ (same bytes, inode and mtime)."""
    folder, made = os.path.join(work, "catalog"), 0
    for n in numbers:
        target, link = os.path.join(folder, image_path(n)), \
            os.path.join(folder, image_path(n, "moved"))
        if os.path.exists(link) and os.path.samefile(target, link):
            continue
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.exists(link):
            os.remove(link)
        os.link(target, link)
        made += 1
    return made


def run_night(args) -> dict:
    items, work = args.items, args.work
    root = index_root(work, items)
    base = read_manifest(root, BASE_VERSION)
    if not base:
        sys.exit(f"{root}: no version {BASE_VERSION!r}; run: build --items {items}")
    restored = restore_originals(work)
    if restored:
        log(f"{restored} images of an earlier night put back")
    rollback(root, BASE_VERSION)
    for version in ("night", "moved"):
        shutil.rmtree(version_folder(root, version), ignore_errors=True)
    model = ensure_small_model(work)
    extra = shlex.split(args.build_options)
    folder = os.path.join(work, "catalog")
    result = {"items": items, "build_options": extra}

    log("model-rate: 200 and 2,000 of the catalog's images, small and default model")
    result["model_rate"] = measure_model_rate(work)

    replaced, added, removed = night_changes(items)
    result["changes"] = {"replaced": len(replaced), "added": len(added), "removed": len(removed)}
    full_root = os.path.join(work, f"night-full-{items}")
    try:
        started = time.perf_counter()
        result["night_images"] = replace_images(work, items, replaced, added)
        gone = set(removed)
        night_csv = write_csv(os.path.join(folder, f"night-{items}.csv"),
                              (catalog_row(n) for n in [*range(items), *added] if n not in gone))
        result["night_images"]["seconds"] = round(time.perf_counter() - started, 1)
        result["incremental"] = build(night_csv, root, "night", work, f"night-{items}", model,
                                      *extra)
        shutil.rmtree(full_root, ignore_errors=True)
        result["full"] = build(night_csv, full_root, "night", work, f"night-full-{items}", model,
                               *extra, "--full", "--projection-from",
                               version_folder(root, BASE_VERSION))
        if result["incremental"]["exit"] == 0 and result["full"]["exit"] == 0:
            result["identical"] = compare_artifacts(version_folder(root, "night"),
                                                    version_folder(full_root, "night"))
    finally:
        restore_originals(work)
        rollback(root, BASE_VERSION)
    save_result(work, "nights", str(items), result)  # so far; the moved night follows
    if not args.keep:
        shutil.rmtree(full_root, ignore_errors=True)
        shutil.rmtree(version_folder(root, "night"), ignore_errors=True)

    moved = [n for n in range(items) if (n // PER_FOLDER) % 10 == 0]
    moved_set = set(moved)
    result["moved"] = {"items_moved": len(moved), "links_made": link_moved(work, moved)}
    moved_csv = write_csv(os.path.join(folder, f"moved-{items}.csv"),
                          (catalog_row(n, "moved" if n in moved_set else "images")
                           for n in range(items)))
    try:
        result["moved"]["build"] = build(moved_csv, root, "moved", work, f"moved-{items}", model,
                                         *extra)
    finally:
        rollback(root, BASE_VERSION)
    if not args.keep:
        shutil.rmtree(version_folder(root, "moved"), ignore_errors=True)

    incremental = result["incremental"]
    default_s = default_model_seconds(result["model_rate"], items)
    result["default_model_full_build_s_estimate"] = round(default_s, 1)
    result["night_share_of_default_full"] = round(incremental["wall_s"] / default_s, 4)
    result["night_share_of_small_full"] = round(incremental["wall_s"] / result["full"]["wall_s"], 4)
    save_result(work, "nights", str(items), result)
    return result


# ----------------------------------------------------------------------------- table

def _gb(kb: Optional[int]) -> str:
    return f"{kb / 2**20:.2f}" if kb else "-"


def print_table(work: str) -> None:
    results = load_results(work)
    builds = results.get("builds", {})
    if builds:
        print("\n| items | exit | indexed | shards | wall s | items/s | CPU s | peak RSS GB "
              "(time -v) | sampled tree peak GB, at s | progress before the peak |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for key in sorted(builds, key=int):
            row = builds[key]
            indexed = row.get("counts", {}).get("indexed")
            print(f"| {int(key):,} | {row['exit']} | {'-' if indexed is None else f'{indexed:,}'} "
                  f"| {row.get('shards', '-')} | {row['wall_s']:.0f} | "
                  f"{row.get('items_per_s', '-')} | {row['cpu_s']:.0f} | "
                  f"{_gb(row['peak_rss_kb'])} | {_gb(row['sampled_peak_tree_rss_kb'])}, "
                  f"{row['sampled_peak_at_s']:.0f} | {row['progress_before_peak'] or '-'} |")
        if "100000" in builds and "1000000" in builds and builds["100000"].get("items_per_s") \
                and builds["1000000"].get("items_per_s"):
            print(f"\nitems/s at 1,000,000 / at 100,000: "
                  f"{builds['1000000']['items_per_s'] / builds['100000']['items_per_s']:.3f}")
        for key in sorted(builds, key=int):
            if builds[key].get("artifact_bytes_per_item"):
                print(f"bytes per item at {int(key):,}: {builds[key]['artifact_bytes_per_item']}")
    for key, row in sorted(results.get("readers", {}).items(), key=lambda kv: int(kv[0])):
        print(f"\nreader at {int(key):,} items ({row['shards']} shards, {row['dimension']}-d): "
              f"open {row['open_s']} s (first {row['first_open_s']} s), RssAnon "
              f"{row['rss_anon_mb_after_open']} MB after open, "
              f"{row['rss_anon_mb_after_queries']} MB after {row['queries']} queries; "
              f"query_item p50 {row['item_query_ms_p50']} ms, p99 {row['item_query_ms_p99']} "
              f"ms; recall@10 {row['recall_at_10']} ({row['recall_at_10_ties_counted']} "
              f"counting ties) against exact search")
    rate = results.get("model_rate", {}).get("latest")
    if rate:
        _print_rate(rate)
    for key, night in sorted(results.get("nights", {}).items(), key=lambda kv: int(kv[0])):
        if "moved" not in night:
            print(f"\nnight at {int(key):,}: incomplete: {night}")
            continue
        _print_rate(night["model_rate"], f"in the night's run at {int(key):,}")
        inc, full = night["incremental"], night["full"]
        moved = night["moved"]["build"]
        print(f"\nnight at {int(key):,}: {night['changes']}")
        print("| build | exit | wall s | CPU s | peak RSS GB | counts |")
        print("|---|---|---|---|---|---|")
        for label, row in (("incremental", inc), ("full (--full --projection-from base)", full),
                           ("moved folder, incremental", moved)):
            print(f"| {label} | {row['exit']} | {row['wall_s']:.0f} | {row['cpu_s']:.0f} | "
                  f"{_gb(row['peak_rss_kb'])} | {row.get('counts')} |")
        identical = night.get("identical")
        if identical:
            verdict = all(entry["differing"] == 0 for entry in identical.values())
            print(f"artifacts identical to a full build's: {verdict} "
                  + "; ".join(f"{top}: {entry['files'] - entry['differing']}/{entry['files']}"
                              for top, entry in identical.items()))
        print(f"night wall / the small model's full build of the same catalog: "
              f"{night['night_share_of_small_full']}; / Lite0's full build of "
              f"{int(key):,} images (estimated {night['default_model_full_build_s_estimate']:.0f}"
              f" s from model-rate): {night['night_share_of_default_full']}")
        print(f"moved folder: {night['moved']['items_moved']:,} items under new URIs, same "
              f"bytes: embedded {moved.get('counts', {}).get('embedded')}, reused "
              f"{moved.get('counts', {}).get('reused')}")


def _print_rate(rate: dict, where: str = "") -> None:
    print(f"\nmodel rate{' ' + where if where else ''} (TFLite; builds of {RATE_SIZES[0]} and {RATE_SIZES[1]} "
          "catalog images):")
    print("| model | P@10, raw vectors | bare images/s | build images/s (2,000) "
          "| marginal images/s | fixed s | marginal CPU ms/image |")
    print("|---|---|---|---|---|---|---|")
    for label in ("small", "default"):
        row = rate[label]
        print(f"| {row['model']} | {row.get('p_at_10_raw', '-')} | {row['bare_images_per_s']} "
              f"| {row['build_images_per_s']} | {row['marginal_images_per_s']} | "
              f"{row['fixed_s']} | {row.get('marginal_cpu_ms_per_image', '-')} |")


# ----------------------------------------------------------------------------- main

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, items=None, **kwargs):
        sub = commands.add_parser(name, **kwargs)
        sub.add_argument("--work", default=DEFAULT_WORK)
        if items is not None:
            sub.add_argument("--items", type=int, default=items)
        return sub

    command("catalog", 1_000_000, help="write the catalog's PNGs and CSV")
    command("model", help="write the small model")
    build_options = dict(default="", metavar="'--OPTION VALUE ...'",
                         help="more `catalog-index build` options for every build of "
                              "this command (default: none, the default options)")
    command("build", 1_000_000, help="a full build, timed").add_argument(
        "--build-options", **build_options)
    reader = command("reader", 1_000_000, help="open and query the base version")
    reader.add_argument("--queries", type=int, default=1000)
    command("model-rate", help="small vs default model, bare and in builds")
    night = command("night", 1_000_000, help="a 1%%-changed night and a moved folder")
    night.add_argument("--build-options", **build_options)
    night.add_argument("--keep", action="store_true",
                       help="keep the night's versions and the full build's root")
    command("table", help="print every result so far")
    probe = commands.add_parser("reader-probe")
    probe.add_argument("root")
    probe.add_argument("--version", default=BASE_VERSION)
    probe.add_argument("--queries", type=int, default=1000)
    probe.add_argument("--no-recall", dest="recall", action="store_false")
    bare = commands.add_parser("bare-rate")
    bare.add_argument("model")
    bare.add_argument("--work", default=DEFAULT_WORK)
    args = parser.parse_args(argv)

    if args.command == "reader-probe":
        print(json.dumps(reader_probe(args.root, args.version, args.queries, args.recall)))
        return
    if args.command == "bare-rate":
        folder = os.path.join(args.work, "catalog")
        count = max(RATE_SIZES)
        images = [open(os.path.join(folder, image_path(n)), "rb").read() for n in range(count)]
        labels = fashion_images()[1][np.arange(count) % SOURCES]
        print(json.dumps(bare_rate(args.model, images, labels)))
        return
    os.makedirs(args.work, exist_ok=True)
    if args.command == "catalog":
        save_result(args.work, "catalogs", str(args.items), write_catalog(args.work, args.items))
    elif args.command == "model":
        print(ensure_small_model(args.work))
    elif args.command == "build":
        run_build(args)
    elif args.command == "reader":
        run_reader(args)
    elif args.command == "model-rate":
        run_model_rate(args)
    elif args.command == "night":
        run_night(args)
    print_table(args.work)


if __name__ == "__main__":
    main()
