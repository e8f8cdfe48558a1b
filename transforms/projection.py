"""LearnProjection and WriteProjection: the vectors' projection (models/projection.py),
fitted on a sample of the catalog's own embeddings and written into the version.

The sample is the MAX_SAMPLE items whose sha256(item_id) is smallest (transforms/sample.py),
with the label column's value of each where the catalog has one. The projection is one
small object, a side input of the shard stage (which projects each shard's vectors before
its Annoy index is built) and a file of the version, checksummed in the manifest, that the
reader applies to every query.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import apache_beam as beam

from catalog_index import storage
from catalog_index.schema import PROJECTION_FILE, join
from models import caption_transfer, projection
from transforms.sample import SampleVectors, sample_record, stacked

MAX_SAMPLE = 20_000  # items the projection is fitted on (their vectors as float16: 51 MB)


class LearnProjection(beam.PTransform):
    """embedded items -> one Projection to ``dims`` dimensions (PCA, plus LDA from
    ``label_column`` where items have one), or None with ``dims`` 0."""

    def __init__(self, dims: int, label_column: Optional[str] = None,
                 max_sample: int = MAX_SAMPLE, previous=None):
        super().__init__()
        self.dims, self.label_column = dims, label_column
        self.max_sample, self.previous = max_sample, previous

    def expand(self, items):
        dims, label_column = self.dims, self.label_column

        def sampled(item):
            if dims:
                label = (item.get("passthrough") or {}).get(label_column) if label_column \
                    else None
                yield sample_record(caption_transfer.sample_key(item["item_id"]), item,
                                    label if isinstance(label, str) and label.strip() else None)

        def fit(sample):
            if not dims or len(sample) < 2:
                return None
            labels = [label for _, _, label in sample] if label_column else None
            return projection.fit(stacked(sample), dims, labels, label_column)

        return (items
                | "Sampled" >> beam.FlatMap(sampled)
                | "Sample" >> SampleVectors(self.max_sample, self.previous)
                | "Fit" >> beam.Map(fit))


def write_projection(fitted: Optional[projection.Projection], version_dir: str) -> Optional[dict]:
    """Write the projection file into the version; -> its manifest entry (None: none)."""
    if fitted is None:
        return None
    data = fitted.to_bytes()
    storage.write_bytes(join(version_dir, PROJECTION_FILE), data)
    return {"file": PROJECTION_FILE, "sha256": hashlib.sha256(data).hexdigest(),
            **fitted.summary()}
