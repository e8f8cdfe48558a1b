"""Report: report.json and report.html for the version, before it is published (or not).

Sample queries run against the version's own shards, through the same reader search teams
use, and show each sample item's top-5 neighbours as thumbnails with their title, category
and caption.
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import io
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import pyarrow.parquet as pq

from catalog_index import storage
from catalog_index.report_html import SampleItem, SampleQuery, render, thumbnail_data_uri
from catalog_index.schema import ERRORS_PREFIX, REPORT_FILE, join, shard_suffix

SAMPLE_QUERIES = 6
NEIGHBOURS = 5
EXAMPLES_PER_REASON = 3
THUMBNAIL_READS = 16  # images read at once for the sample queries' thumbnails
# The column shown as an item's category: the label column the quality figures judged
# (--label-column), else this one.
DEFAULT_CATEGORY_COLUMN = "category"


def report_from_manifest(manifest: dict) -> dict:
    return {key: manifest[key] for key in ("version_id", "counts", "quality", "validation",
                                            "timings")}


def error_groups(version_dir: str) -> list:
    """Errors grouped by (stage, error type), largest group first, with a few examples."""
    path = join(version_dir, f"{ERRORS_PREFIX}-{shard_suffix(0, 1)}.parquet")
    rows = pq.read_table(io.BytesIO(storage.read_bytes(path))).to_pylist()
    groups = collections.defaultdict(list)
    for row in rows:
        groups[(row["stage"], row["error_type"])].append(row)
    return [{"stage": stage, "error_type": error_type, "count": len(members),
             "examples": [f"{m['item_id']}: {m['message']}" for m in members[:EXAMPLES_PER_REASON]]}
            for (stage, error_type), members in sorted(groups.items(), key=lambda g: -len(g[1]))]


def _thumbnail(row: dict):
    try:
        return thumbnail_data_uri(storage.read_image_bytes(row["image_uri"]))
    except Exception:
        return None


def sample_item(row: dict, label_column: str, thumbnail, score=None) -> SampleItem:
    """A metadata row as the page shows it: its title, its category (the label column's
    value), its caption and where the caption came from."""
    return SampleItem(row["item_id"], row.get("title"), row.get(label_column),
                      row.get("caption"), row.get("caption_source"),
                      row.get("caption_confidence"), thumbnail, score)


def sample_queries(index, label_column: str = DEFAULT_CATEGORY_COLUMN) -> list:
    """A fixed handful of items (by hash of item_id) and their nearest neighbours."""
    chosen = heapq.nsmallest(SAMPLE_QUERIES, index.item_ids(),
                             key=lambda item: hashlib.sha256(item.encode()).hexdigest())
    queries = [(index.item(item_id), index.query_item(item_id, NEIGHBOURS)) for item_id in chosen]
    # The thumbnails' images are read side by side: one slow object costs one wait.
    rows = [row for row, hits in queries for row in (row, *(hit.metadata for hit in hits))]
    with ThreadPoolExecutor(THUMBNAIL_READS) as pool:
        thumbnails = iter(list(pool.map(_thumbnail, rows)))
    samples = []
    for row, hits in queries:
        query = sample_item(row, label_column, next(thumbnails))
        samples.append(SampleQuery(query, [
            sample_item(hit.metadata, label_column, next(thumbnails), hit.score)
            for hit in hits]))
    return samples


class _WriteReport(beam.DoFn):
    def __init__(self, output_root: str, version_dir: str):
        self.output_root, self.version_dir = output_root, version_dir

    def process(self, manifest):
        from search.index import PublishedIndex

        samples = []
        if manifest["counts"]["indexed"]:
            with tempfile.TemporaryDirectory() as cache:
                index = PublishedIndex.from_manifest(self.output_root, manifest, cache_dir=cache)
                samples = sample_queries(index, manifest["quality"].get("label_column")
                                         or DEFAULT_CATEGORY_COLUMN)
        page = render(manifest, error_groups(self.version_dir), samples)
        storage.write_text(join(self.version_dir, "report.html"), page)
        storage.write_text(join(self.version_dir, REPORT_FILE),
                           json.dumps(report_from_manifest(manifest), indent=2))
        yield manifest


class Report(beam.PTransform):
    def __init__(self, output_root: str, version_dir: str):
        super().__init__()
        self.output_root, self.version_dir = output_root, version_dir

    def expand(self, manifests):
        return manifests | "WriteReport" >> beam.ParDo(
            _WriteReport(self.output_root, self.version_dir))
