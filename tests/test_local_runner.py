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


def _filled(buffer_class, groups=6, values_per_group=40, value_bytes=50_000):
    """A GroupByKey buffer holding `groups` keys of large byte values, as the runner fills it
    from the shuffle: encoded (key, value) pairs in the global window."""
    from apache_beam import coders
    from apache_beam.transforms import core
    from apache_beam.transforms.window import GlobalWindows

    key_value = coders.TupleCoder([coders.VarIntCoder(), coders.BytesCoder()])
    pre = coders.WindowedValueCoder(key_value, coders.coders.GlobalWindowCoder())
    post = coders.WindowedValueCoder(
        coders.TupleCoder([coders.VarIntCoder(), coders.IterableCoder(coders.BytesCoder())]),
        coders.coders.GlobalWindowCoder())
    buffer = buffer_class(pre, post, core.Windowing(GlobalWindows()))
    for n in range(values_per_group):
        buffer.append(b"".join(
            pre.get_impl().encode_nested(GlobalWindows.windowed_value(
                (key, bytes([key, n % 256]) * (value_bytes // 2))))
            for key in range(groups)))
    return buffer


def _partition_peak(buffer_class, parts):
    """The parts, and the most memory partitioning took on top of the filled buffer."""
    import tracemalloc

    tracemalloc.start()  # before filling: frees of untraced blocks would not count
    try:
        buffer = _filled(buffer_class)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        output = buffer.partition(parts)
        return output, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_grouped_values_are_partitioned_group_by_group_into_the_same_bytes():
    from runners.local import GroupByGroupBuffer

    # Beam's own class (execution.GroupingBuffer names ours once a LocalRunner has run).
    stock_output, stock_peak = _partition_peak(GroupByGroupBuffer.__base__, 4)
    ours, our_peak = _partition_peak(GroupByGroupBuffer, 4)
    # The workers receive the same bytes, in the same order, in the same parts.
    assert [b"".join(part) for part in ours] == [b"".join(part) for part in stock_output]
    assert sum(len(part) for part in ours) == 6  # one chunk per group
    group_bytes = 40 * 50_000
    # tracemalloc sees Python objects, not the C stream: Beam's buffer copies every encoded
    # group while the whole decoded table still lives; ours frees each group's values as
    # soon as they are encoded, so it never holds more than one group on top of the table.
    assert stock_peak >= 6 * group_bytes
    assert our_peak <= group_bytes
