"""LearnProjection and write_projection: the vectors' projection (models/projection.py),
fitted on a sample of the catalog's own embeddings, or carried forward from the published
version, and written into the version.

The sample is the MAX_SAMPLE items whose sha256(item_id) is smallest (transforms/sample.py),
with the label column's value of each where the catalog has one. The projection is one
small object, a side input of the shard stage (which projects each shard's vectors before
its Annoy index is built) and a file of the version, checksummed in the manifest, that the
reader applies to every query.

A nightly build starts from the published version's projection, so that the index space
stays the same from night to night. It keeps it unless the items embedded tonight drift
from it (models.projection.DRIFT_THRESHOLD): only then are the sample's vectors read and a
new projection fitted. A projection given by the user (``--projection-from``) is kept as it
is.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import apache_beam as beam
import numpy as np

from catalog_index import storage
from catalog_index.schema import PROJECTION_FILE, join
from models import caption_transfer, projection
from models.projection import DRIFT_THRESHOLD, MIN_DRIFT_ITEMS, Projection, label_of
from transforms.reuse import is_reused
from transforms.sample import SampleVectors, sample_record, stacked

MAX_SAMPLE = 20_000  # items the projection is fitted on (their vectors as float16: 51 MB)


class LearnProjection(beam.PTransform):
    """embedded items -> one (Projection or None, how it came: a dict for the manifest).

    ``dims`` 0, or fewer than ``MIN_ITEMS_PER_DIM * dims`` items to fit on: None (the
    index keeps the model's vectors). ``start`` None: fitted to ``dims`` dimensions (PCA, plus LDA from
    ``label_column`` where items have one). ``start`` given: kept, or with ``refit_on_drift``
    fitted again when tonight's items drift from it."""

    def __init__(self, dims: int, label_column: Optional[str] = None,
                 max_sample: int = MAX_SAMPLE, previous=None,
                 start: Optional[Projection] = None, start_origin: Optional[dict] = None,
                 refit_on_drift: bool = True):
        super().__init__()
        self.dims, self.label_column = dims, label_column
        self.max_sample, self.previous = max_sample, previous
        self.start, self.start_origin = start, start_origin or {}
        self.refit_on_drift = refit_on_drift

    def expand(self, items):
        dims, label_column, start = self.dims, self.label_column, self.start
        if start is not None and not self.refit_on_drift:
            return items.pipeline | "Given" >> beam.Create([(start, dict(self.start_origin))])
        drift = None
        if start is not None:
            drift = (items
                     | "EmbeddedTonight" >> beam.Filter(lambda item: not is_reused(item))
                     | "Drift" >> beam.CombineGlobally(DriftFn(start)))

        def sampled(item):
            if dims:
                label = label_of((item.get("passthrough") or {}).get(label_column)) \
                    if label_column else None
                yield sample_record(caption_transfer.sample_key(item["item_id"]), item, label)

        wanted = None if drift is None else beam.pvalue.AsSingleton(
            drift | "Refit" >> beam.Map(needs_refit))
        start_origin = self.start_origin

        def fit(sample, drift=None):
            if start is not None:
                origin = {**start_origin, "drift": drift}
                if not needs_refit(drift):
                    return start, origin
                origin = {"fitted": "drift", "drift": drift}
            else:
                origin = {"fitted": "sample"}
            if not dims or len(sample) < projection.MIN_ITEMS_PER_DIM * dims:
                return None, origin  # too few items to learn from: the model's vectors
            labels = [label for _, _, label in sample] if label_column else None
            return projection.fit(stacked(sample), dims, labels, label_column), origin

        sample = (items
                  | "Sampled" >> beam.FlatMap(sampled)
                  | "Sample" >> SampleVectors(self.max_sample, self.previous, wanted))
        return sample | "Fit" >> beam.Map(
            fit, *([] if drift is None else [beam.pvalue.AsSingleton(drift)]))


def needs_refit(drift: Optional[dict]) -> bool:
    """Whether tonight's items drift far enough from the projection to fit it again."""
    return bool(drift) and drift["items"] >= MIN_DRIFT_ITEMS and \
        drift["ratio"] > DRIFT_THRESHOLD


class DriftFn(beam.CombineFn):
    """Items -> {items, ratio}: how much more of their variance the projection's PCA part
    loses than it lost on its own sample (models.projection.Projection.drift). Rounded, so
    that the order in which bundles are summed cannot change the decision."""

    def __init__(self, start: Projection):
        self.start = start

    def create_accumulator(self):
        return 0, 0.0, 0.0

    def add_input(self, accumulator, item):
        count, lost, total = accumulator
        item_lost, item_total = self.start.residual(np.asarray(item["embedding"]))
        return count + 1, lost + item_lost, total + item_total

    def merge_accumulators(self, accumulators):
        count, lost, total = 0, 0.0, 0.0
        for c, l, t in accumulators:
            count, lost, total = count + c, lost + l, total + t
        return count, lost, total

    def extract_output(self, accumulator):
        count, lost, total = accumulator
        return {"items": count, "ratio": round(self.start.drift(lost, total), 4),
                "threshold": DRIFT_THRESHOLD}


def write_projection(learned: tuple, version_dir: str, settings: dict) -> Optional[dict]:
    """``learned``: (projection or None, origin) from :class:`LearnProjection`. Write the
    projection file into the version; -> its manifest entry (None: none):
    the file's checksum, what the projection is, how it came (``origin``), and the
    ``settings`` (--dims, --label-column) a later build compares before it carries it on."""
    fitted, origin = learned
    if fitted is None:
        return None
    data = fitted.to_bytes()
    storage.write_bytes(join(version_dir, PROJECTION_FILE), data)
    return {"file": PROJECTION_FILE, "sha256": hashlib.sha256(data).hexdigest(),
            **fitted.summary(), "settings": settings, "origin": origin}
