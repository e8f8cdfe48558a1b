"""Where a local build's CPU goes, stage by stage, measured inside a real build.

    .venv/bin/python -m benchmarks.build_cpu [--images 4000] [build options ...]

Runs ``catalog-index build`` in this process (local defaults: worker threads, so every
stage runs here) on the catalog JPEGs of ``benchmarks.build_throughput``, with each stage's
DoFn wrapped to add up the CPU time of the thread running it. Prints milliseconds of CPU
per image for each stage, the process's whole CPU (user and system), and the remainder:
the runner itself, thread hand-offs, shuffles, start-up and finishing.

On two cores both the build and the bare model are CPU-bound, so the build reaches a
share of the bare model's rate equal to inference's share of this total.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import resource
import threading
import time

from benchmarks.build_throughput import add_catalog_arguments, catalog_paths, measure_build


def _stages():
    """(class, method, label) for every stage that does per-item work."""
    from models.loader import TFLiteEmbeddingModel
    from transforms import caption, embed, fetch, preprocess, report, shard, text_index

    return [(fetch.FetchImage, "process", "fetch (read + sha256)"),
            (preprocess.DecodeImage, "process", "decode + resize"),
            (TFLiteEmbeddingModel, "_run", "inference (TFLite)"),
            (embed.EmbeddingModelHandler, "run_inference", "inference handler (incl. TFLite)"),
            (embed._CheckEmbedding, "process", "check embedding"),
            (caption.CaptionItem, "process", "caption"),
            (shard.BuildShard, "process", "shard: spill, sort, Annoy, Parquet"),
            (text_index._BuildTextIndex, "process", "text index"),
            (report._WriteReport, "process", "report")]


@contextlib.contextmanager
def thread_cpu_per_stage():
    """Yields a Counter {label: CPU seconds} filled while the stages run."""
    spent, lock = collections.Counter(), threading.Lock()
    originals = []
    for cls, name, label in _stages():
        original = getattr(cls, name)
        originals.append((cls, name, original))

        @functools.wraps(original)
        def timed(self, *args, _original=original, _label=label, **kwargs):
            started = time.thread_time()
            result = _original(self, *args, **kwargs)
            if hasattr(result, "__next__"):  # a generator: its work happens while iterated
                result = list(result)
            with lock:
                spent[_label] += time.thread_time() - started
            return result

        setattr(cls, name, timed)
    try:
        yield spent
    finally:
        for cls, name, original in originals:
            setattr(cls, name, original)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_catalog_arguments(parser)
    parser.set_defaults(images=4000)
    args, build_args = parser.parse_known_args(argv)
    paths = catalog_paths(args)
    measure_build(paths[:64], build_args)  # warm-up: file cache, model conversion cache
    with thread_cpu_per_stage() as spent:
        before = resource.getrusage(resource.RUSAGE_SELF)
        seconds = measure_build(paths, build_args)
        after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    count = len(paths)

    def per_image(value):
        return f"{value / count * 1e3:6.2f} ms"

    print(f"build of {count} images: {seconds:.1f} s, {count / seconds:.1f} images/s, "
          f"{(user + system) / seconds:.2f} cores busy")
    print(f"process CPU per image:            {per_image(user + system)} "
          f"(user {per_image(user).strip()}, system {per_image(system).strip()})")
    for label, value in spent.most_common():
        print(f"  {label:32s} {per_image(value)}")
    stages = sum(value for label, value in spent.items() if label != "inference (TFLite)")
    print(f"  {'the rest (runner, shuffles, ...)':32s} {per_image(user + system - stages)}")


if __name__ == "__main__":
    main()
