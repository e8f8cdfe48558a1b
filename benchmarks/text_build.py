"""The text index's build at catalog scale (issue 28): peak memory and time of the
in-memory build it replaced (every document a Python list of terms, then bm25s) and of
the streaming one (``build_text_index``: terms counted into arrays, shard by shard), on
the same synthetic catalog, each in a fresh process.

    .venv/bin/python -m benchmarks.text_build 100000 1000000 --analyzer   # ~6 min
    .venv/bin/python -m benchmarks.text_build 100000 --builders new

The catalog (:func:`catalog`): shards of metadata rows shaped like the build's text
columns. Titles: four in five English, from a class of Fashion-MNIST, a colour, words from
a long tail of 20,000 made-up words (brands, styles, materials, Zipf-distributed) and a
model number out of 200,000; one in five a hand-written title in one of 11 languages
(benchmarks/multilingual_titles.py) with a model number. The category is the class name;
the caption "<colour> <class>", from the catalog, learned (with a confidence) or from
ImageNet labels, as the caption step writes them. It is written once per size to
Parquet files (zstd, like the metadata files), and read back as each build reads it:
the old one every shard's table at once, the new one a shard at a time, a few thousand
rows at a time (transforms/text_index.py). Peak memory is the process's maximum resident
set (``ru_maxrss``, what ``/usr/bin/time -v`` reports), next to the resident set after the
imports; time is for the build alone (reading included), most of it the analyzer
(``--analyzer`` times the documents' terms apart: the analyzer and the lists of its terms,
which both builds make). Wall-clock and CPU seconds both: on a shared machine CPU time is
the steadier.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Iterable, Iterator, List

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.multilingual_titles import CLASSES, LANGUAGES, titles

COLOURS = ("black", "white", "gray", "navy blue", "red", "beige", "olive green", "brown",
           "pink", "light blue", "dark green", "yellow")
SYLLABLES = ("ka", "lo", "mi", "ra", "ten", "vo", "shi", "del", "mar", "zu", "bri", "on",
             "qua", "ste", "fi", "nor", "pel", "ax", "tri", "ul")
TAIL_WORDS = 20_000
MODEL_NUMBERS = 200_000
SHARD_ITEMS = 20_000


def _tail_words(rng: random.Random) -> List[str]:
    words = set()
    while len(words) < TAIL_WORDS:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def catalog(items: int, shard_items: int = SHARD_ITEMS, seed: int = 0) -> Iterator[pa.Table]:
    """Metadata-like shards (item_id, caption, caption_source, caption_confidence, title,
    category) of ``items`` rows in all, the same for the same arguments."""
    rng = random.Random(seed)
    words = _tail_words(rng)
    # Zipf-like: word i drawn with weight 1 / (i + 1)
    weights = [1.0 / (i + 1) for i in range(len(words))]
    cumulative = list(itertools.accumulate(weights))
    multilingual = {name: [] for name in CLASSES}  # class -> its titles in every language
    for language in LANGUAGES:
        for title, name in titles(language):
            multilingual[name].append(title)
    for start in range(0, items, shard_items):
        rows = range(start, min(items, start + shard_items))
        tail = rng.choices(words, cum_weights=cumulative, k=3 * len(rows))
        columns = {"item_id": [], "caption": [], "caption_source": [],
                   "caption_confidence": [], "title": [], "category": []}
        for n, i in enumerate(rows):
            name = CLASSES[rng.randrange(len(CLASSES))]
            colour = rng.choice(COLOURS)
            number = rng.randrange(MODEL_NUMBERS)
            if rng.random() < 0.2:
                title = f"{rng.choice(multilingual[name])} {number}"
            else:
                title = (f"{tail[3 * n].title()} {tail[3 * n + 1]} {colour} {name} "
                         f"{tail[3 * n + 2]} #{number}")
            source = rng.choice(("catalog", "learned", "learned", "labels"))
            columns["item_id"].append(f"sku-{i:07d}")
            columns["title"].append(title if rng.random() < 0.9 else None)
            columns["category"].append(name if rng.random() < 0.8 else None)
            columns["caption"].append(f"{colour} {name.lower()}" if source != "labels"
                                      else rng.choice(("jersey, t-shirt", "sandal", "cardigan",
                                                       "running shoe", "mailbag, postbag")))
            columns["caption_source"].append(source)
            columns["caption_confidence"].append(
                round(rng.uniform(0.25, 1.0), 3) if source == "learned" else None)
        yield pa.table({**{name: pa.array(values, pa.string())
                           for name, values in columns.items()
                           if name != "caption_confidence"},
                        "caption_confidence": pa.array(columns["caption_confidence"],
                                                       pa.float32())})


def reference_build(tables: Iterable[pa.Table], folder: str) -> List[str]:
    """The text index as it was built before issue 28, kept as the reference: every
    document a Python list of its terms, indexed by bm25s in memory."""
    import bm25s

    from catalog_index.text_index import documents

    corpus = [document for table in tables for document in documents(table)]
    os.makedirs(folder, exist_ok=True)
    if not corpus:
        return []
    vocabulary = {term: i for i, term in enumerate(sorted({t for doc in corpus for t in doc}))}
    retriever = bm25s.BM25()
    retriever.index(([[vocabulary[t] for t in doc] for doc in corpus], vocabulary),
                    show_progress=False)
    retriever.save(folder, show_progress=False)
    return sorted(os.listdir(folder))


def write_catalog(folder: str, items: int) -> List[str]:
    """The catalog as metadata-like Parquet files in ``folder`` (kept between runs)."""
    marker = os.path.join(folder, "_complete")
    if not os.path.exists(marker):
        os.makedirs(folder, exist_ok=True)
        for shard, table in enumerate(catalog(items)):
            pq.write_table(table, os.path.join(folder, f"part-{shard:05d}.parquet"),
                           compression="zstd", row_group_size=16_384)
        open(marker, "w").close()
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if name.endswith(".parquet"))


def _columns(path: str) -> List[str]:
    from catalog_index.text_index import text_columns

    return text_columns(pq.read_schema(path)) + ["caption_source", "caption_confidence"]


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def probe(builder: str, files: List[str], folder: str) -> dict:
    """Build with ``builder`` ("old" or "new") in this process; its figures."""
    import bm25s  # noqa: F401  (imported before the baseline is taken, as both use it)

    from catalog_index.text_index import ROWS_PER_BATCH, build_text_index

    baseline = _rss_mb()
    started, cpu = time.perf_counter(), _cpu_seconds()
    if builder == "old":  # as the transform did: every shard's table, then one build
        tables = [pq.read_table(path, columns=_columns(path)) for path in files]
        reference_build(tables, folder)
    else:
        def batches():
            for path in files:
                with pq.ParquetFile(path) as parquet:
                    yield from parquet.iter_batches(batch_size=ROWS_PER_BATCH,
                                                    columns=_columns(path))
        build_text_index(batches(), folder)
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))
    return {"builder": builder, "seconds": seconds, "cpu_seconds": cpu,
            "baseline_mb": baseline, "peak_mb": peak, "index_mb": size / 2**20}


def documents_seconds(files: List[str]) -> float:
    """CPU seconds that making every document's terms takes (``documents``: the analyzer,
    and the lists of its terms), the part both builds share."""
    from catalog_index.text_index import ROWS_PER_BATCH, documents

    seconds = 0.0
    for path in files:
        with pq.ParquetFile(path) as parquet:
            for batch in parquet.iter_batches(batch_size=ROWS_PER_BATCH, columns=_columns(path)):
                started = _cpu_seconds()
                documents(batch)
                seconds += _cpu_seconds() - started
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", type=int, default=[100_000])
    parser.add_argument("--builders", default="old,new")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "text-build"),
                        help="where the synthetic catalogs are written (and kept)")
    parser.add_argument("--analyzer", action="store_true",
                        help="also time the documents' terms alone (mostly the analyzer)")
    parser.add_argument("--probe", nargs=3, metavar=("BUILDER", "CATALOG", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        builder, data, out = args.probe
        files = sorted(os.path.join(data, name) for name in os.listdir(data)
                       if name.endswith(".parquet"))
        print(json.dumps(probe(builder, files, out)))
        return
    print("| documents | builder | build s (wall) | CPU s | RSS after imports MB | "
          "peak RSS MB | index files MB |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for items in args.sizes:
        data = os.path.join(args.data, f"catalog-{items}")
        files = write_catalog(data, items)
        outputs = {}
        for builder in args.builders.split(","):
            out = tempfile.mkdtemp(prefix=f"text-{builder}-")
            result = json.loads(subprocess.run(
                [sys.executable, "-m", "benchmarks.text_build", "--probe", builder, data, out],
                check=True, capture_output=True, text=True).stdout)
            outputs[builder] = out
            print(f"| {items:,} | {builder} | {result['seconds']:.1f} | "
                  f"{result['cpu_seconds']:.1f} | "
                  f"{result['baseline_mb']:.0f} | {result['peak_mb']:,.0f} | "
                  f"{result['index_mb']:.0f} |", flush=True)
        if len(outputs) == 2:
            old, new = outputs.values()
            same = all(open(os.path.join(old, name), "rb").read()
                       == open(os.path.join(new, name), "rb").read()
                       for name in os.listdir(old)) and \
                sorted(os.listdir(old)) == sorted(os.listdir(new))
            print(f"|  | files byte-identical: {same} |  |  |  |  |  |", flush=True)
        for out in outputs.values():
            shutil.rmtree(out)
        if args.analyzer:
            print(f"|  | documents() alone |  | {documents_seconds(files):.1f} |  |  |  |",
                  flush=True)


if __name__ == "__main__":
    main()
