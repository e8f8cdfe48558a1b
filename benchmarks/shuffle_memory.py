"""Shuffle memory: the peak RSS of a 20-line pipeline whose shuffle is larger than memory
should allow, on Beam's FnApiRunner and on runners/local.py's LocalRunner (issue 28;
results in docs/benchmarks.md, "The local runner's shuffle on disk").

    .venv/bin/python -m benchmarks.shuffle_memory [--elements 500000] [--bytes 5000]
        [--runners beam,local] [--shape flatten-gbk|gbk|two-readers] [--workers 2]
        [--spill-mb MB]

Each run is a fresh process: it runs the pipeline on 10 values (a warm-up, whose peak RSS
is ``start_kb``), then on ``--elements`` values, and reports its peak RSS (``ru_maxrss``,
what ``/usr/bin/time -v`` reports) and wall time. ``multi_threading`` with ``--workers``
workers, as the build runs. One bundle of a one-element ``Create`` emits every value
(``--bytes`` bytes each, over 10 keys); the shapes:

- ``flatten-gbk``: a ``Flatten`` with a second, small input (Beam materializes a
  multi-input Flatten whole) into a ``GroupByKey``;
- ``gbk``: the ``GroupByKey`` alone;
- ``two-readers``: one PCollection read by two stages (the second behind a side input).

Runners: "local" is LocalRunner (``--spill-mb``: its buffers' bound, runners.spill.SPILL_BYTES);
"beam" is Beam's FnApiRunner with only its timed flush switched off (with it, its
multi-threaded workers tear long bundles, see runners/local.py, and the run measures
garbage); "beam-state" the same with ``use_state_iterables``. Every run checks that each
key got all its values.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

KEYS = 10


def pipeline(shape: str, elements: int, value_bytes: int, runner, workers: int = 2) -> None:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(["--direct_running_mode=multi_threading",
                               f"--direct_num_workers={workers}"])

    def values(_):
        pad = b"v" * (value_bytes - 8)
        for n in range(elements):
            yield n % KEYS, n.to_bytes(8, "big") + pad

    def check(key, ns):
        ns = sorted(int.from_bytes(v[:8], "big") for v in ns if v is not None)
        if ns != list(range(key, elements, KEYS)):
            raise AssertionError(f"key {key}: {len(ns)} values, expected "
                                 f"{len(range(key, elements, KEYS))}")

    with beam.Pipeline(runner=runner, options=options) as p:
        keyed = p | beam.Create([None]) | beam.FlatMap(values)
        if shape == "flatten-gbk":
            small = p | "Small" >> beam.Create([(key, None) for key in range(KEYS)])
            keyed = (keyed, small) | beam.Flatten()
        if shape == "two-readers":
            count = keyed | beam.combiners.Count.Globally()
            keyed = keyed | "AfterCount" >> beam.Map(lambda kv, _: kv,
                                                     beam.pvalue.AsSingleton(count))
        _ = keyed | beam.GroupByKey() | beam.MapTuple(check)


def _runner(name: str):
    if name == "local":
        from runners.local import LocalRunner

        return LocalRunner()
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner, worker_handlers

    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 2 ** 31 - 1  # see the module's docstring
    return FnApiRunner(use_state_iterables=name == "beam-state")


def _child(args) -> None:
    if args.spill_mb is not None:
        from runners import spill

        spill.SPILL_BYTES = int(args.spill_mb * 2**20)
    pipeline(args.shape, 10, args.bytes, _runner(args.runner), args.workers)  # warm up
    start_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    pipeline(args.shape, args.elements, args.bytes, _runner(args.runner), args.workers)
    print(json.dumps({"wall_s": round(time.monotonic() - start, 1), "start_kb": start_kb,
                      "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def measure(runner: str, shape: str, elements: int, value_bytes: int, workers: int = 2,
            spill_mb: float = None) -> dict:
    """One run in a fresh process: its peak RSS (and its RSS after a warm-up run of the same
    pipeline on 10 elements), and wall time."""
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks.shuffle_memory", "--child", "--runner", runner,
         "--shape", shape, "--elements", str(elements), "--bytes", str(value_bytes),
         "--workers", str(workers)] + ([] if spill_mb is None else ["--spill-mb", str(spill_mb)]),
        capture_output=True, text=True)
    if process.returncode:
        return {"runner": runner, "error": process.stderr.strip().splitlines()[-1:]}
    return {"runner": runner, **json.loads(process.stdout.strip().splitlines()[-1])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--elements", type=int, default=500_000)
    parser.add_argument("--bytes", type=int, default=5_000)
    parser.add_argument("--shape", default="flatten-gbk",
                        choices=("flatten-gbk", "gbk", "two-readers"))
    parser.add_argument("--runners", default="beam,local")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--spill-mb", type=float,
                        help="the local runner's runners.spill.SPILL_BYTES, in MB")
    parser.add_argument("--runner", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    shuffle_mb = args.elements * args.bytes / 1e6
    print(f"{args.shape}: {args.elements:,} values of {args.bytes:,} bytes "
          f"({shuffle_mb:,.0f} MB)")
    for runner in args.runners.split(","):
        result = measure(runner, args.shape, args.elements, args.bytes, args.workers,
                         args.spill_mb)
        print(f"  {runner:>10}: " + (f"error {result['error']}" if "error" in result else
              f"peak RSS {result['peak_kb']:,} kB (+{result['peak_kb'] - result['start_kb']:,} "
              f"kB over the warm-up's), {result['wall_s']} s"), flush=True)


if __name__ == "__main__":
    main()
