"""A bundle that outlives the embedded workers' timed flush (runners/local.py, gap 1), run in
a process of its own:

    python -m tests.long_bundle beam|local ELEMENTS FLUSH_MS

One bundle of a one-element ``Create`` emits ELEMENTS dicts (a few microseconds each to
encode, as the build's records) into a ``Flatten`` and a ``GroupByKey``, on two
multi-threaded workers whose output streams Beam flushes every FLUSH_MS from a timer
thread. Prints ``delivered N`` (elements that reached the GroupByKey, each at most once), or
fails. A torn stream decodes into garbage, which can ask for gigabytes: the process's data
segment is capped at DATA_LIMIT_BYTES so that it fails instead of taking the machine.
"""

from __future__ import annotations

import resource
import sys

DATA_LIMIT_BYTES = 1536 * 2**20
KEYS = 7


def run(runner_name: str, elements: int, flush_ms: int) -> None:
    import apache_beam as beam
    import numpy as np
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner, worker_handlers

    # Beam's own interval is 1,000 ms; a shorter one tears a shorter bundle. LocalRunner
    # switches the timed flush off whatever it is.
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = flush_ms
    if runner_name == "local":
        from runners.local import LocalRunner

        runner = LocalRunner()
    else:
        runner = FnApiRunner()
    options = PipelineOptions(["--direct_running_mode=multi_threading",
                               "--direct_num_workers=2"])
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        keyed = (pipeline
                 | beam.Create([None])
                 | beam.FlatMap(lambda _: range(elements))
                 | beam.Map(lambda n: (n % KEYS, {"n": n, "vector": np.zeros(4, np.float32)})))
        sentinels = pipeline | "Sentinels" >> beam.Create([(key, None) for key in range(KEYS)])
        _ = ((keyed, sentinels)
             | beam.Flatten()
             | beam.GroupByKey()
             | beam.MapTuple(lambda key, values: len(
                 {v["n"] for v in values if v is not None and v["n"] % KEYS == key}))
             | beam.CombineGlobally(sum)
             | beam.Map(lambda delivered: print(f"delivered {delivered}", flush=True)))


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_DATA, (DATA_LIMIT_BYTES, DATA_LIMIT_BYTES))
    run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
