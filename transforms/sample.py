"""SampleVectors: a bounded, deterministic sample of the items' vectors, for the models a
build fits on its own catalog (caption transfer, the vector projection).

The sample is the ``max_sample`` records whose key is smallest (a hash of item_id: the same
items for the same catalog, whatever the runner's order), combined as they stream past
(Beam's Top combiner), so memory is bounded by the sample, not the catalog. Vectors travel
as float16. An item reused from the previous version comes without its vector: its record
holds where the vector is (transforms/reuse.py), and once the sample is chosen those
vectors are read, one previous shard per worker. The result is one list, sorted by item_id.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np

from transforms.reuse import PREVIOUS_VECTOR, previous_vectors

IN_HAND = -1  # the sample records that have their vector: no previous shard to read


def sample_record(key: bytes, item: dict, payload) -> tuple:
    """(key, item_id, float16 vector bytes or the (shard, row) of a reused one, payload)."""
    vector = item[PREVIOUS_VECTOR] if PREVIOUS_VECTOR in item else \
        np.asarray(item["embedding"], dtype=np.float16).tobytes()
    return key, item["item_id"], vector, payload


class SampleVectors(beam.PTransform):
    """sample records (:func:`sample_record`) -> one list of (item_id, float16 vector bytes,
    payload), sorted by item_id."""

    def __init__(self, max_sample: int, previous=None, wanted=None):
        super().__init__()
        self.max_sample = max_sample
        self.previous = previous  # {version_dir, shards} of the version items are reused from
        # A singleton side input: False when the sample turns out not to be needed; then no
        # vector is read and the result is an empty list.
        self.wanted = wanted

    def expand(self, records):
        previous = self.previous

        def by_previous_shard(record):
            vector = record[2]
            return (IN_HAND if isinstance(vector, bytes) else vector[0]), record

        def read_vectors(group, wanted=True):
            if not wanted:
                return
            _shard, records = group
            records = list(records)
            missing = [record[2] for record in records if not isinstance(record[2], bytes)]
            found = iter(previous_vectors(previous, missing).astype(np.float16)
                         if missing else [])
            for _key, item_id, vector, payload in records:
                yield item_id, vector if isinstance(vector, bytes) else next(found).tobytes(), \
                    payload

        return (records
                | "Sample" >> beam.combiners.Top.Of(self.max_sample, key=lambda r: r[0],
                                                    reverse=True)
                | "EachRecord" >> beam.FlatMap(lambda sample: sample)
                | "ByPreviousShard" >> beam.Map(by_previous_shard)
                | "GroupByPreviousShard" >> beam.GroupByKey()
                | "ReadPreviousVectors" >> beam.FlatMap(
                    read_vectors, *([] if self.wanted is None else [self.wanted]))
                | "Together" >> beam.combiners.ToList()
                | "ByItemId" >> beam.Map(sorted))


def stacked(sample) -> np.ndarray:
    """The sample's vectors as one float16 array [items, dimension]."""
    return np.stack([np.frombuffer(vector, dtype=np.float16) for _, vector, _ in sample])
