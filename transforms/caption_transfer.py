"""LearnCaptions: the catalog's words for its images (models.caption_transfer), learned from
a bounded sample of the items that have text, as one small model for a side input.

The sample is the MAX_SAMPLE items with text whose sha256(item_id) is smallest: the same
items for the same catalog, whatever the runner's order, so rebuilds stay byte-identical.
Its records (an id, a float16 vector, a few phrases: about 2.6 KB) are combined as they
stream past (Beam's Top combiner), so memory is bounded by the sample (about 26 MB per
worker thread), not the catalog. An item reused from the previous version comes without its
vector: its record holds where the vector is, and once the sample is chosen those vectors
are read, one previous shard per worker. The model is applied where a shard's vectors are
already together, in transforms/shard.py.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np

from models import caption_transfer
from transforms.reuse import PREVIOUS_VECTOR, previous_vectors

IN_HAND = -1  # the sample records that have their vector: no previous shard to read


class LearnCaptions(beam.PTransform):
    """embedded items -> one CaptionModel, or None for a catalog without shared phrases (and
    for ``method`` labels)."""

    def __init__(self, text_columns, method: str = "head",
                 max_sample: int = caption_transfer.MAX_SAMPLE, previous=None):
        super().__init__()
        self.text_columns = list(text_columns)
        self.method, self.max_sample = method, max_sample
        self.previous = previous  # {version_dir, shards} of the version items are reused from

    def expand(self, items):
        text_columns, method, previous = self.text_columns, self.method, self.previous

        def sampled(item):
            if method == "labels":  # captions stay ImageNet labels and colors
                return
            passthrough = item.get("passthrough") or {}
            phrases = caption_transfer.item_phrases([passthrough.get(c) for c in text_columns])
            if phrases:
                vector = item[PREVIOUS_VECTOR] if PREVIOUS_VECTOR in item else \
                    np.asarray(item["embedding"], dtype=np.float16).tobytes()
                yield caption_transfer.sample_key(item["item_id"]), item["item_id"], vector, phrases

        def by_previous_shard(record):
            vector = record[2]
            return (IN_HAND if isinstance(vector, bytes) else vector[0]), record

        def read_vectors(group):
            _shard, records = group
            records = list(records)
            missing = [record for record in records if not isinstance(record[2], bytes)]
            found = previous_vectors(previous, [record[2] for record in missing]) \
                if missing else []
            read = iter(found.astype(np.float16) if len(found) else [])
            for key, item_id, vector, phrases in records:
                if not isinstance(vector, bytes):
                    vector = next(read).tobytes()
                yield key, item_id, vector, phrases

        def fit(sample):
            sample = sorted(sample, key=lambda record: record[1])  # by item_id
            if not sample:
                return None
            vectors = np.stack([np.frombuffer(record[2], dtype=np.float16)
                                for record in sample])
            return caption_transfer.fit(vectors, [record[3] for record in sample], method)

        return (items
                | "ItemsWithText" >> beam.FlatMap(sampled)
                | "Sample" >> beam.combiners.Top.Of(self.max_sample, key=lambda r: r[0],
                                                    reverse=True)
                | "EachRecord" >> beam.FlatMap(lambda sample: sample)
                | "ByPreviousShard" >> beam.Map(by_previous_shard)
                | "GroupByPreviousShard" >> beam.GroupByKey()
                | "ReadPreviousVectors" >> beam.FlatMap(read_vectors)
                | "Together" >> beam.combiners.ToList()
                | "Fit" >> beam.Map(fit))
