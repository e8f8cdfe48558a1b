"""The ceiling of the build's ratio on this machine: the build's work with no framework.

    .venv/bin/python -m benchmarks.build_ceiling [--images 4000] [--repeats 3]   # ~4 min

The issue asks the end-to-end build for at least 0.7 of the bare model's images/s. This
measures, in one run, how close any implementation can get here: a plain Python loop
that does only the work every build must do, with none of Beam's or the pipeline's
bookkeeping (no runner, no shuffles, no dead-letter plumbing, no metrics, no
validation, no report):

- per image: read the file, sha256 it, decode + resize (``preprocess_image``), run the
  model (the build's batch size, one 1-thread TFLite interpreter per thread, as the
  build), and caption it (``LabelColorCaptioner``), on one thread per core;
- at the end: one Annoy index per shard (``ann.tune_shard`` with the build's defaults,
  4 shards) and the metadata and embeddings Parquet of each shard.

Steps are added one at a time, so the cost of each shows. In the same run it also
measures the bare model exactly as ``benchmarks.build_throughput`` does (the same
pre-decoded batches, batch sizes and thread layouts; the fastest is the limit) and the real
``catalog-index build`` of the same files, wall clock: the difference between the last
loop and the build is what Beam and the pipeline's bookkeeping cost.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import threading
import time

import numpy as np

from benchmarks.build_throughput import (catalog_paths, measure_build, measure_model_rates,
                                         predecoded_pixels, print_model_rates,
                                         rate_benchmark_parser)

NUM_SHARDS = 4  # as benchmarks.build_throughput.measure_build
STEPS = ("decode", "model", "caption", "index")


def build_defaults() -> dict:
    """catalog-index build's defaults for the options the loop shares with it."""
    from pipelines.options import add_build_arguments

    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    return {name: parser.get_default(name)
            for name in ("batch_size", "n_trees", "seed", "min_recall")}


def run_loop(paths: list, model, captioner, steps: str) -> float:
    """Seconds for one thread per core to push every path through the steps up to
    ``steps`` (one of STEPS); "index" also builds the shards' Annoy and Parquet files."""
    from catalog_index import ann
    from catalog_index.schema import shard_of
    from models.loader import LITE0_PREPROCESSING
    from models.preprocessing import preprocess_image
    from transforms.shard import ShardSpill, shard_record
    from transforms.write_metadata import write_embeddings_parquet, write_metadata_parquet

    defaults = build_defaults()
    batch_size = defaults["batch_size"]
    depth = STEPS.index(steps)
    cores = os.cpu_count() or 1
    results, lock = [], threading.Lock()
    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]

    def work(worker: int):
        done = []
        for batch in batches[worker::cores]:
            items = []
            for path in batch:
                with open(path, "rb") as stream:
                    data = stream.read()
                image = preprocess_image(data, LITE0_PREPROCESSING)
                items.append({"item_id": os.path.basename(path)[:-4], "image_uri": path,
                              "sha256": hashlib.sha256(data).hexdigest(), "image": image,
                              "width": image.width, "height": image.height})
            if depth >= 1:
                output = model.predict(np.stack([item["image"].pixels for item in items]))
                for index, item in enumerate(items):
                    item["embedding"] = output.embeddings[index]
                    if depth >= 2:
                        caption = captioner.caption(output.probabilities[index],
                                                    item["image"].content)
                        item.update(caption=caption.text, labels=[
                            {"label": name, "score": score} for name, score in caption.labels],
                            colors=[{"name": name, "fraction": share}
                                    for name, share in caption.colors])
            for item in items:
                del item["image"]
            done.extend(items)
        with lock:
            results.extend(done)

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(n,)) for n in range(cores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if depth >= 3:
        shards = [[] for _ in range(NUM_SHARDS)]
        for item in sorted(results, key=lambda item: item["item_id"]):
            shards[shard_of(item["item_id"], NUM_SHARDS)].append(item)
        for shard, items in enumerate(shards):
            for annoy_id, item in enumerate(items):
                item.update(shard=shard, annoy_id=annoy_id, passthrough={})
            vectors = np.stack([item["embedding"] for item in items])
            tuned = ann.tune_shard(vectors, defaults["n_trees"], defaults["seed"],
                                   defaults["min_recall"], ann.queries_per_shard(NUM_SHARDS))
            tuned.index.save(os.devnull)
            # the shard's Parquet files as the shard stage writes them: rows sorted by
            # item_id through its spill file, then metadata and embeddings
            with tempfile.TemporaryDirectory() as scratch:
                spill = ShardSpill(scratch, [], vectors.shape[1])
                for item in items:
                    spill.add(shard_record(item))
                table, sorted_vectors = spill.sorted()
                write_metadata_parquet(table, shard, [], os.path.join(scratch, "metadata"))
                write_embeddings_parquet(table, sorted_vectors, "fingerprint",
                                         os.path.join(scratch, "embeddings"))
    return time.perf_counter() - started


def main(argv=None):
    from models.captioner import LabelColorCaptioner
    from models.loader import load_model

    args = rate_benchmark_parser(__doc__).parse_args(argv)
    paths = catalog_paths(args)

    model = load_model(threads=1)
    captioner = LabelColorCaptioner()
    run_loop(paths[:64], model, captioner, "index")  # warm-up: file cache, interpreters
    loop_rates = {steps: len(paths) / min(run_loop(paths, model, captioner, steps)
                                          for _ in range(args.repeats)) for steps in STEPS}
    measure_build(paths[:64])  # warm-up, as in benchmarks.build_throughput
    build_rate = len(paths) / min(measure_build(paths) for _ in range(args.repeats))
    model_rates = measure_model_rates(predecoded_pixels(paths), args.repeats)

    print(f"{len(paths)} JPEGs of {args.size}x{args.size}; {os.cpu_count()} cores; "
          f"best of {args.repeats} runs each")
    limit = print_model_rates(model_rates)
    labels = {"decode": "read + sha256 + decode + resize",
              "model": "  + the model",
              "caption": "  + captions",
              "index": "  + Annoy and Parquet per shard"}
    for steps, rate in loop_rates.items():
        print(f"loop, {labels[steps]:32s} {rate:8.1f} images/s   "
              f"ratio to the limit {rate / limit:5.2f}")
    print(f"catalog-index build, wall clock:        {build_rate:8.1f} images/s   "
          f"ratio to the limit {build_rate / limit:5.2f}")


if __name__ == "__main__":
    main()
