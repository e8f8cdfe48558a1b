"""LearnCaptions: the catalog's words for its images (models.caption_transfer), learned from
a bounded sample of the items that have text, as one small model for a side input.

The sample is the MAX_SAMPLE items with text whose sha256(item_id) is smallest: the same
items for the same catalog, whatever the runner's order, so rebuilds stay byte-identical.
Its records (an id, a float16 vector, a few phrases: about 2.6 KB) are sampled by
transforms/sample.py, in memory bounded by the sample (about 26 MB per worker thread), not
the catalog. The model is applied where a shard's vectors are already together, in
transforms/shard.py.
"""

from __future__ import annotations

import apache_beam as beam

from models import caption_transfer
from transforms.sample import SampleVectors, sample_record, stacked


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
        text_columns, method = self.text_columns, self.method

        def sampled(item):
            if method == "labels":  # captions stay ImageNet labels and colors
                return
            passthrough = item.get("passthrough") or {}
            phrases = caption_transfer.item_phrases([passthrough.get(c) for c in text_columns])
            if phrases:
                yield sample_record(caption_transfer.sample_key(item["item_id"]), item, phrases)

        def fit(sample):
            if not sample:
                return None
            return caption_transfer.fit(stacked(sample), [phrases for _, _, phrases in sample],
                                        method)

        return (items
                | "ItemsWithText" >> beam.FlatMap(sampled)
                | "Sample" >> SampleVectors(self.max_sample, self.previous)
                | "Fit" >> beam.Map(fit))
