"""Incremental builds: what the previous published version knows about an image whose
bytes did not change is carried forward, not computed again.

    items ─► MatchPrevious ─► HashImages ─► MatchContent ─► FetchImages ─► Decode ─► Embed ─► shards
              same stamp: reused ─────────────────────────────────────────────────────────►
                                 bytes the version embedded: reused ──────────────────────►

Every item gets a **stamp**: what the storage says of its image without reading it (size
and mtime of a local file; size, crc32c and md5 of a gs:// object, listed a thousand at a
time per folder). The version records it next to the sha256. When an item's image has the
stamp the previous version recorded for that URI, the previous vector, size, labels and
colors are reused without a read (the vector as a pointer to its row: the shard stage reads
it from the previous embeddings file, so no join or shuffle carries it). Otherwise the
image is read and hashed, and its sha256 is looked up among the previous version's images
that no item claimed by stamp: **reuse is by content**, so an image whose bytes the version
embedded is not decoded again whatever its URI now is (a catalog exported to a new folder,
a file touched, an object rewritten). The join carries sha256s and catalog fields, never
image bytes: an image not found is read again to be decoded. Only new and changed images
are decoded and embedded. Captions, shards and the text index depend on the whole catalog and
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

from catalog_index import storage
from catalog_index.schema import join
from models.captioner import Caption, LabelColorCaptioner, caption_fields
from transforms.errors import counter
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
    for batch in storage.parquet_batches(stream, READ_ROWS, columns):
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
    shards}) as float32 [len(where), dimension], in that order (see
    :func:`previous_vector_batches`, which does not hold them all)."""
    result = None
    for positions, vectors in previous_vector_batches(previous, where):
        if result is None:
            result = np.empty((len(where), vectors.shape[1]), np.float32)
        result[positions] = vectors
    return result if result is not None else np.empty((0, 0), np.float32)


def previous_vector_batches(previous: dict, where):
    """Yields (positions in ``where``, float32 vectors [len(positions), dimension]) until
    every vector at ``where`` [(shard, row)] of the previous version ({version_dir,
    shards}) was given once. Each file is streamed once, a few thousand rows at a time:
    what is in memory is one batch."""
    files = {entry["shard"]: entry["embeddings_file"] for entry in previous["shards"]}
    wanted = {}
    for position, (shard, row) in enumerate(where):
        wanted.setdefault(shard, []).append((row, position))
    for shard, rows in sorted(wanted.items()):
        rows.sort()
        relative = files[shard]
        with storage.open_read(join(previous["version_dir"], relative)) as stream:
            start, next_wanted = 0, 0
            for batch in storage.parquet_batches(stream, READ_ROWS, ["vector"]):
                end = start + batch.num_rows
                first = next_wanted
                while next_wanted < len(rows) and rows[next_wanted][0] < end:
                    next_wanted += 1
                if next_wanted > first:
                    found = np.asarray(rows[first:next_wanted], dtype=np.int64)
                    yield found[:, 1], _vectors(batch.column(0))[found[:, 0] - start]
                start = end
        if next_wanted < len(rows):
            raise ValueError(f"{relative}: no row {rows[next_wanted][0]} ({start} rows)")


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


UNCLAIMED = "unclaimed"  # MatchPrevious's output of the previous images no stamp claimed


def _where(previous: tuple) -> tuple:
    """A previous image's (shard, row): which of several rows is taken, deterministically."""
    return tuple(previous[-1])


class _Match(beam.DoFn):
    """(bucket of URIs, {items, stamps, previous}) -> each item stamped, and reused when the
    previous version recorded the same stamp for its URI. The previous version's images
    that no item claimed so go to the ``unclaimed`` output, keyed by sha256, for
    :class:`MatchContent`."""

    def __init__(self, captioner: LabelColorCaptioner):
        self.captioner = captioner

    def process(self, joined):
        _bucket, groups = joined
        listed = dict(groups["stamps"])
        previous = {}
        for uri, found in groups.get("previous", []):
            previous.setdefault(uri, []).append(found)
        claimed = set()
        for item in groups["items"]:
            uri = item["image_uri"]
            stamp = listed.get(uri) if storage.is_gcs(uri) else storage.local_stamp(uri)
            item = {**item, "source_stamp": stamp}
            before = next((found for found in sorted(previous.get(uri, []), key=_where)
                           if stamp is not None and found[1] == stamp), None)
            if before is not None:
                claimed.add(uri)
                yield reused_item(item, before, self.captioner)
            else:
                yield item
        for uri, found in previous.items():
            if uri not in claimed:
                for before in found:
                    yield beam.pvalue.TaggedOutput(UNCLAIMED, (before[0], before))


class MatchPrevious(beam.PTransform):
    """items -> {"items": the items stamped, complete and marked reused where the previous
    version recorded the same stamp for the URI; "unclaimed": (sha256, what the previous
    version knows) of its other images}. With ``previous`` None (a full build) items are
    only stamped, and nothing is unclaimed."""

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
                | "Match" >> beam.ParDo(_Match(self.captioner)).with_outputs(
                    UNCLAIMED, main="items"))


class _MatchContent(beam.DoFn):
    """(bucket of sha256s, {items, previous}) -> each hashed item, reused when the previous
    version embedded the same bytes (any of its images no stamp claimed), else handed on
    to be read and decoded."""

    def __init__(self, captioner: LabelColorCaptioner):
        self.captioner = captioner

    def process(self, joined):
        _bucket, groups = joined
        previous = {}
        for sha256, found in groups["previous"]:
            if sha256 not in previous or _where(found) < _where(previous[sha256]):
                previous[sha256] = found  # the same bytes: any one gives the same results
        for item in groups["items"]:
            before = None if is_reused(item) else previous.get(item["sha256"])
            yield item if before is None else reused_item(item, before, self.captioner)


class MatchContent(beam.PTransform):
    """hashed items (``sha256``, no bytes) -> the items, reused where the previous version
    has an unclaimed image with their bytes (``unclaimed``: MatchPrevious's output)."""

    def __init__(self, unclaimed, class_names=None):
        super().__init__()
        self.unclaimed = unclaimed
        self.captioner = LabelColorCaptioner(class_names=class_names)

    def expand(self, items):
        return ({"items": items | "ItemBySha256" >> beam.Map(
                    lambda item: (bucket(item.get("sha256") or ""), item)),
                 "previous": self.unclaimed | "PreviousBySha256" >> beam.Map(
                     lambda pair: (bucket(pair[0]), pair))}
                | "JoinBySha256Bucket" >> beam.CoGroupByKey()
                | "MatchContent" >> beam.ParDo(_MatchContent(self.captioner)))
