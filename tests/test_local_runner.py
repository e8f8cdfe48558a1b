"""The local runner's gap (runners/local.py), shown on a minimal pipeline: one bundle that
runs for several seconds must deliver every element it produced, exactly once."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from runners.local import LocalRunner

ELEMENTS = 200_000  # one bundle of many seconds: the timed flush fires again and again


def _options():
    return PipelineOptions(["--direct_running_mode=multi_threading", "--direct_num_workers=2"])


def test_a_long_bundle_loses_no_element_and_tears_none():
    with beam.Pipeline(runner=LocalRunner(), options=_options()) as pipeline:
        keyed = (pipeline
                 | beam.Create([None])
                 | beam.FlatMap(lambda _: range(ELEMENTS))
                 | beam.Map(lambda n: (n % 7, {"n": n, "vector": np.zeros(4, np.float32)})))
        sentinels = pipeline | "Sentinels" >> beam.Create([(key, None) for key in range(7)])
        counts = ((keyed, sentinels)
                  | beam.Flatten()
                  | beam.GroupByKey()
                  | beam.MapTuple(lambda key, values: (
                      key, sorted(v["n"] for v in values if v is not None))))
        summary = counts | beam.MapTuple(lambda key, ns: (key, len(ns), len(set(ns)), sum(ns)))
        expected = [(key, len(range(key, ELEMENTS, 7)), len(range(key, ELEMENTS, 7)),
                     sum(range(key, ELEMENTS, 7))) for key in range(7)]
        assert_that(summary, equal_to(expected))
