"""Incremental builds: what the previous published version knows about an image whose
bytes did not change is carried forward, not computed again.

    items ─► MatchPrevious ─► FetchImages ─► SameBytes ─► Decode ─► Embed ─► Caption ─► shards
              same stamp: reused ─────────────────────────────────────────────────────►
                         other stamp, same sha256: reused ────────────────────────────►

Every item gets a **stamp**: what the storage says of its image without reading it (size
and mtime of a local file; size, crc32c and md5 of a gs:// object, listed a thousand at a
time per folder). The version records it next to the sha256. When an item's image has the
stamp the previous version recorded for that URI, the previous vector, size, labels and
colors are reused without a read (the vector as a pointer to its row: the shard stage reads
it from the previous embeddings file, so no join or shuffle carries it). Otherwise the image is read; if its sha256 is still the
previous one, the same fields are reused without a decode. Only new and changed images are
decoded and embedded. Captions, shards and the text index depend on the whole catalog and
are built from the merged items, as in a full build, which gives the same bytes.

A reused item is marked ``reused`` and every later stage hands it on untouched, so all
items stay one stream: the local runner materializes a multi-input Flatten whole, which at
the shuffle's peak would hold every item's vector once more.
"""

from __future__ import annotations

import posixpath
from typing import Optional

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq

from catalog_index import storage
from catalog_index.schema import join
from models.captioner import Caption, LabelColorCaptioner, caption_fields
from transforms.errors import counter, without
from transforms.keys import bucket

REUSED = "reused"  # an item complete from the previous version: stages hand it on


def is_reused(item: dict) -> bool:
    return bool(item.get(REUSED))


# Where a reused item's vector is: (shard, row) of the previous version's embeddings files.
# The vector itself stays there until the shard stage reads it (transforms/shard.py), so
# the joins and the shuffle carry a few hundred bytes an item instead of 5 KB.
PREVIOUS_VECTOR = "previous_vector"

# What a previous version says of one image, per URI: (sha256, stamp, width, height,
# labels, colors, (shard, row) of its vector).
_PREVIOUS_METADATA = ["item_id", "image_uri", "sha256", "width", "height", "labels", "colors",
                      "shard", "annoy_id"]
READ_ROWS = 4096  # rows of a previous shard decoded at a time (vectors: 20 MB at 1,280-d)


def gs_folder(uri: str) -> Optional[str]:
    return posixpath.dirname(uri) + "/" if storage.is_gcs(uri) else None


class _ListFolder(beam.DoFn):
    def process(self, folder: str):
        yield from storage.list_stamps(folder)


def _rows(stream, columns):
    """The rows of a Parquet file, read a few thousand at a time."""
    for batch in pq.ParquetFile(stream).iter_batches(batch_size=READ_ROWS, columns=columns):
        yield from zip(*(batch.column(name).to_pylist() for name in columns))


def read_previous_shard(version_dir: str, shard: dict):
    """(image_uri, what the version knows of it) for each item of one shard, streamed from
    its metadata and embeddings files, which hold the same items in the same order (the
    vectors are not read: a row number points at each)."""
    with storage.open_read(join(version_dir, shard["metadata_file"])) as metadata, \
            storage.open_read(join(version_dir, shard["embeddings_file"])) as embeddings:
        for row, (item_id, stamp) in zip(_rows(metadata, _PREVIOUS_METADATA),
                                         _rows(embeddings, ["item_id", "source_stamp"]),
                                         strict=True):
            if row[0] != item_id:
                raise ValueError(f"{shard['embeddings_file']}: rows out of step with "
                                 f"{shard['metadata_file']} at item {item_id!r}")
            _, uri, sha256, width, height, labels, colors, number, annoy_id = row
            yield uri, (sha256, stamp, width, height, labels, colors, (number, annoy_id))


def previous_vectors(previous: dict, where) -> np.ndarray:
    """The vectors at ``where`` [(shard, row)] of the previous version ({version_dir,
    shards}) as float32 [len(where), dimension], in that order. Each file is streamed a few
    thousand rows at a time: what stays in memory is the vectors asked for."""
    files = {entry["shard"]: entry["embeddings_file"] for entry in previous["shards"]}
    wanted = {}
    for position, (shard, row) in enumerate(where):
        wanted.setdefault(shard, []).append((row, position))
    result = None
    for shard, rows in sorted(wanted.items()):
        rows.sort()
        relative = files[shard]
        with storage.open_read(join(previous["version_dir"], relative)) as stream:
            start, next_wanted = 0, 0
            for batch in pq.ParquetFile(stream).iter_batches(batch_size=READ_ROWS,
                                                             columns=["vector"]):
                end = start + batch.num_rows
                if next_wanted < len(rows) and rows[next_wanted][0] < end:
                    vectors = _vectors(batch.column(0))
                    if result is None:
                        result = np.empty((len(where), vectors.shape[1]), np.float32)
                    while next_wanted < len(rows) and rows[next_wanted][0] < end:
                        row, position = rows[next_wanted]
                        result[position] = vectors[row - start]
                        next_wanted += 1
                start = end
        if next_wanted < len(rows):
            raise ValueError(f"{relative}: no row {rows[next_wanted][0]} ({start} rows)")
    return result if result is not None else np.empty((0, 0), np.float32)


def _vectors(column) -> np.ndarray:
    """A list<float> column as float32 [rows, dimension]."""
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(column), -1) if len(column) else flat.reshape(0, 0)


class ReadPreviousVersion(beam.PTransform):
    """The previous version's per-image results, keyed by image URI."""

    def __init__(self, version_dir: str, shards):
        super().__init__()
        self.version_dir, self.shards = version_dir, list(shards)

    def expand(self, pipeline):
        return (pipeline
                | "Shards" >> beam.Create(self.shards)
                | "ReadShard" >> beam.FlatMap(lambda shard: read_previous_shard(
                    self.version_dir, shard)))


def reused_item(item: dict, previous: tuple, captioner: LabelColorCaptioner) -> dict:
    """``item`` with the fields a fresh fetch, decode, embed and caption would give its
    image, taken from the previous version; its vector is read where the shard is built
    (``PREVIOUS_VECTOR``). Scores were rounded to 4 decimals when they were measured and
    stored as float32: rounding again gives the very same numbers."""
    sha256, stamp, width, height, labels, colors, where = previous
    labels = [(entry["label"], round(float(entry["score"]), 4)) for entry in labels or []]
    colors = [(entry["name"], round(float(entry["fraction"]), 4)) for entry in colors or []]
    caption = Caption(captioner.describe(labels, colors), labels, colors)
    counter("reused").inc()
    return {**item, "sha256": sha256, "source_stamp": item.get("source_stamp") or stamp,
            "width": width, "height": height, PREVIOUS_VECTOR: tuple(where),
            **caption_fields(caption, captioner.threshold), REUSED: True}


class _Match(beam.DoFn):
    """(bucket of URIs, {items, stamps, previous}) -> each item stamped, then reused when
    the previous version recorded the same stamp for its URI, else with the previous
    results attached for the sha256 check after the read."""

    def __init__(self, captioner: LabelColorCaptioner):
        self.captioner = captioner

    def process(self, joined):
        _bucket, groups = joined
        listed = dict(groups["stamps"])
        previous = {}
        for uri, found in groups.get("previous", []):
            if uri not in previous or found[0] < previous[uri][0]:
                previous[uri] = found  # one per URI: the smallest sha256
        for item in groups["items"]:
            uri = item["image_uri"]
            stamp = listed.get(uri) if storage.is_gcs(uri) else storage.local_stamp(uri)
            item, before = {**item, "source_stamp": stamp}, previous.get(uri)
            if before is not None and stamp is not None and before[1] == stamp:
                yield reused_item(item, before, self.captioner)
            elif before is not None:
                yield {**item, "previous": before}
            else:
                yield item


class MatchPrevious(beam.PTransform):
    """items -> the items stamped: complete and marked reused where the previous version
    recorded the same stamp for the URI, else with the previous results attached (for the
    sha256 check after the read) where it had some. With ``previous`` None (a full build)
    items are only stamped."""

    def __init__(self, previous=None, class_names=None):
        super().__init__()
        self.previous = previous
        self.captioner = LabelColorCaptioner(class_names=class_names)

    def expand(self, items):
        # One path for local and gs:// images alike: a Flatten of two paths would be
        # materialized whole by the local runner (it always is, multi-input).
        previous = {} if self.previous is None else {"previous": self.previous}
        stamps = (items
                  | "GsFolder" >> beam.FlatMap(lambda item: [
                      folder for folder in [gs_folder(item["image_uri"])] if folder])
                  | "EachFolderOnce" >> beam.Distinct()
                  | "ListFolder" >> beam.ParDo(_ListFolder()))
        by_bucket = {
            "items": items | "ItemByUri" >> beam.Map(lambda item: (
                bucket(item["image_uri"]), item)),
            "stamps": stamps | "StampByUri" >> beam.Map(lambda pair: (bucket(pair[0]), pair)),
            **{name: found | "PreviousByUri" >> beam.Map(lambda pair: (bucket(pair[0]), pair))
               for name, found in previous.items()}}
        return (by_bucket
                | "JoinByUriBucket" >> beam.CoGroupByKey()
                | "Match" >> beam.ParDo(_Match(self.captioner)))


class _SameBytes(beam.DoFn):
    """A fetched item whose bytes have the previous version's sha256 (its file was touched,
    or its object rewritten, with the same content): reused, not decoded."""

    def __init__(self, captioner: LabelColorCaptioner):
        self.captioner = captioner

    def process(self, item):
        previous, item = item.get("previous"), without(item, "previous")
        if previous is not None and previous[0] == item["sha256"]:
            yield reused_item(without(item, "image_bytes"), previous, self.captioner)
        else:
            yield item


class SameBytes(beam.PTransform):
    def __init__(self, class_names=None):
        super().__init__()
        self.captioner = LabelColorCaptioner(class_names=class_names)

    def expand(self, fetched):
        return fetched | "SameBytes" >> beam.ParDo(_SameBytes(self.captioner))
