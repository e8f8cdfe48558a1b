"""LearnCaptions: the catalog's words for its images (models.caption_transfer), learned from
a bounded sample of the items that have text, as one small model for a side input.

The sample is the MAX_SAMPLE items with text whose sha256(item_id) is smallest: the same
items for the same catalog, whatever the runner's order, so rebuilds stay byte-identical.
Its records (an id, a float16 vector, a few phrases: about 2.6 KB) are combined as they
stream past (Beam's Top combiner), so memory is bounded by the sample (about 26 MB per
worker thread), not the catalog. The model is applied where
a shard's vectors are already together, in transforms/shard.py.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np

from models import caption_transfer


class LearnCaptions(beam.PTransform):
    """embedded items -> one CaptionModel, or None for a catalog without shared phrases (and
    for ``method`` labels)."""

    def __init__(self, text_columns, method: str = "head",
                 max_sample: int = caption_transfer.MAX_SAMPLE):
        super().__init__()
        self.text_columns = list(text_columns)
        self.method, self.max_sample = method, max_sample

    def expand(self, items):
        text_columns, method = self.text_columns, self.method

        def sampled(item):
            if method == "labels":  # captions stay ImageNet labels and colors
                return
            passthrough = item.get("passthrough") or {}
            phrases = caption_transfer.item_phrases([passthrough.get(c) for c in text_columns])
            if phrases:
                yield (caption_transfer.sample_key(item["item_id"]), item["item_id"],
                       np.asarray(item["embedding"], dtype=np.float16).tobytes(), phrases)

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
                | "Fit" >> beam.Map(fit))
