"""AssignShard, GroupIntoShards and BuildShards: the catalog becomes ``num_shards`` shards.

A stable hash of item_id picks an item's shard. Inside a shard, items are sorted by item_id
and numbered 0..n-1: their Annoy ids. The number of shards follows the catalog's size
(:func:`shard_count`), from the count of catalog rows, so that it is the same for the same
catalog and rebuilds stay byte-identical.

Memory: a shard's items arrive as an iterable that is read exactly once (on Dataflow it is
paged in from the shuffle). Each item is appended to an Arrow file on local disk, a few
thousand rows at a time; the shard is then sorted through a memory map of that file, and
only its vectors, which the Annoy build needs, are ever held in memory together.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog_index import ann, storage
from catalog_index.schema import (changes_file, embeddings_file, index_file, index_space,
                                  join, metadata_file, metadata_schema, shard_of)
from catalog_index.storage import sha256_of_file
from models import caption_transfer
from models.projection import label_of
from transforms.changes import shard_changes, write_changes_parquet
from transforms.errors import counter
from transforms.reuse import PREVIOUS_VECTOR, previous_vectors
from transforms.write_metadata import write_embeddings_parquet, write_metadata_parquet

# Items of a shard, with --num-shards auto. A worker holds one shard at a time while it
# builds its index: measured, about 30 KB an item at 1,280 dimensions (the group as it is
# read, its vectors sorted, Annoy's copy and trees, a Parquet row group being encoded), so
# 10,000 items cost about 300 MB beside the model, and a 100,000-item local build stays
# under 3 GB. Workers with more memory (Dataflow) take larger shards: fewer shards make
# every query cheaper (docs/operations.md).
DEFAULT_MAX_ITEMS_PER_SHARD = 10_000
LABEL_QUERIES = 2000  # labelled items of a build whose neighbours' labels the gate checks
PROJECTION_QUERIES = 500  # items whose neighbours the gate checks a projection keeps
SPILL_ROWS = 4096  # rows buffered as Python objects before they go to the spill file
VECTOR = "__vector"  # the spill's column of float32 bytes; no catalog column is named so
METADATA_KEYS = ("image_uri", "sha256", "width", "height", "caption", "caption_source",
                 "caption_confidence", "labels", "colors", "passthrough", "source_stamp",
                 "reused")
# Spill columns beside the metadata's: the stamp goes to the embeddings file, and whether
# the item was carried forward from the previous version is counted.
SPILL_EXTRA = [pa.field("source_stamp", pa.string()), pa.field("reused", pa.bool_())]


def shard_count(catalog_rows: int, max_items_per_shard: int) -> int:
    """The number of shards for a catalog of ``catalog_rows`` rows (at least 1)."""
    return max(1, math.ceil(catalog_rows / max_items_per_shard))


def shard_record(item: dict) -> tuple:
    """What a shard keeps of an item, compact for the shuffle: (item_id, its other metadata
    fields as JSON, its vector as float32 bytes, or for an item reused from the previous
    version the (shard, row) of its vector there). A local runner holds every record of the
    catalog in memory at the shuffle: three objects an item cost a third of the memory the
    item's dict of Python objects did."""
    fields = {key: item.get(key) for key in METADATA_KEYS}
    vector = item[PREVIOUS_VECTOR] if PREVIOUS_VECTOR in item else \
        np.asarray(item["embedding"], dtype=np.float32).tobytes()
    return item["item_id"], json.dumps(fields, separators=(",", ":")).encode(), vector


class GroupIntoShards(beam.PTransform):
    """items -> (shard, iterable of shard records); ``num_shards`` is a one-element
    PCollection. Shards without items do not appear: :class:`BuildShards` writes them."""

    def __init__(self, num_shards):
        super().__init__()
        self.num_shards = num_shards

    def expand(self, items):
        return (items
                | "AssignShard" >> beam.Map(
                    lambda item, n: (shard_of(item["item_id"], n), shard_record(item)),
                    beam.pvalue.AsSingleton(self.num_shards))
                | "GroupByShard" >> beam.GroupByKey())


class ShardSpill:
    """Shard records appended to an Arrow IPC file in ``folder``, a batch at a time. A
    record whose vector is in the previous version gets a null vector in the file, and its
    place there is remembered (``previous``: spill row -> (shard, row))."""

    def __init__(self, folder: str, passthrough_columns, dimension: int):
        self.passthrough_columns = list(passthrough_columns)
        self.dimension = dimension
        fields = [field for field in metadata_schema(self.passthrough_columns)
                  if field.name not in ("shard", "annoy_id")]
        self.schema = pa.schema(fields + SPILL_EXTRA + [pa.field(VECTOR, pa.binary(4 * dimension))])
        self.path = os.path.join(folder, "spill.arrow")
        self._writer = pa.ipc.new_file(self.path, self.schema)
        self._rows = []
        self.count = 0
        self.previous = {}

    def add(self, record: tuple) -> None:
        item_id, fields, vector = record
        fields = json.loads(fields)
        passthrough = fields.pop("passthrough", None) or {}
        row = {name: passthrough.get(name) for name in self.passthrough_columns}
        row.update(fields, item_id=item_id)
        row["reused"] = bool(row.get("reused"))
        if isinstance(vector, bytes):
            row[VECTOR] = vector
        else:
            self.previous[self.count + len(self._rows)] = tuple(vector)
        self._rows.append(row)
        if len(self._rows) >= SPILL_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
            self.count += len(self._rows)
            self._rows = []

    def sorted(self, previous: Optional[dict] = None):
        """-> (metadata table, vectors [rows, dimension] float32), both sorted by item_id;
        vectors left in the previous version ({version_dir, shards}) are read from there.

        The spill is read through a memory map and closed again; what stays in memory is
        the shard's vectors, one copy in sorted order, and its metadata columns."""
        self._flush()
        self._writer.close()
        with pa.memory_map(self.path) as source:
            reader = pa.ipc.open_file(source)
            item_ids = pa.concat_arrays([reader.get_batch(i).column("item_id")
                                         for i in range(reader.num_record_batches)]) \
                if reader.num_record_batches else pa.array([], pa.string())
            order = pc.sort_indices(item_ids).to_numpy()
            position = np.empty(len(order), dtype=np.int64)
            position[order] = np.arange(len(order))
            vectors = np.empty((len(order), self.dimension), dtype=np.float32)
            metadata, start = [], 0
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                vectors[position[start:start + batch.num_rows]] = vectors_of(
                    batch.column(VECTOR), batch.num_rows, self.dimension)
                metadata.append(batch.drop_columns([VECTOR]))
                start += batch.num_rows
            if self.previous:
                rows = np.fromiter(self.previous, dtype=np.int64, count=len(self.previous))
                vectors[position[rows]] = previous_vectors(previous, self.previous.values())
            schema = self.schema.remove(self.schema.get_field_index(VECTOR))
            table = pa.Table.from_batches(metadata, schema=schema).take(order) \
                if metadata else schema.empty_table()
            del reader, metadata
        return table, vectors


def vectors_of(column: pa.Array, rows: int, dimension: int) -> np.ndarray:
    """A fixed-size binary column of float32 bytes as a [rows, dimension] view (no copy)."""
    data = np.frombuffer(column.buffers()[1], dtype=np.float32, count=rows * dimension,
                         offset=column.offset * 4 * dimension)
    return data.reshape(rows, dimension)


# A process builds one shard at a time: what a worker holds is one shard's vectors, however
# many threads it runs. (The Annoy build is single-threaded for reproducibility anyway.)
_ONE_SHARD_AT_A_TIME = threading.Lock()


class BuildShard(beam.DoFn):
    """(shard, records) -> the shard's Annoy index, metadata and embeddings Parquet, and one
    summary dict for the manifest. Same records + same options -> same bytes."""

    def __init__(self, version_dir: str, passthrough_columns, dimension: int, n_trees: int,
                 seed: int, target_recall: float, model_fingerprint: str, text_columns=(),
                 previous: Optional[dict] = None, label_column: Optional[str] = None):
        self.version_dir, self.dimension = version_dir, dimension
        # The previous published version, for changes/: {version_dir, shards, space}.
        self.previous = previous
        self.passthrough_columns = list(passthrough_columns)
        self.text_columns = [c for c in text_columns if c in self.passthrough_columns]
        self.n_trees, self.seed, self.target_recall = n_trees, seed, target_recall
        self.model_fingerprint = model_fingerprint
        # The catalog column whose labels the quality gate's precision is measured on.
        self.label_column = label_column if label_column in self.passthrough_columns else None

    def process(self, shard_records, num_shards: int, caption_model=None, projection=None):
        shard, records = shard_records
        with _ONE_SHARD_AT_A_TIME:
            yield self.build(shard, records, num_shards, caption_model, projection)

    def build(self, shard: int, records, num_shards: int, caption_model=None,
              projection=None) -> dict:
        """``projection`` (models/projection.py): the Annoy index holds each vector projected;
        the embeddings file keeps the model's own, so that a later build can fit again."""
        with tempfile.TemporaryDirectory() as scratch:
            spill = ShardSpill(scratch, self.passthrough_columns, self.dimension)
            for record in records:
                spill.add(record)
            table, vectors = spill.sorted(self.previous)
            table = self.caption(table, vectors, caption_model)
            files = {"index_file": index_file(shard, num_shards),
                     "metadata_file": metadata_file(shard, num_shards),
                     "embeddings_file": embeddings_file(shard, num_shards),
                     "changes_file": changes_file(shard, num_shards)}
            local = {key: os.path.join(scratch, key) for key in files}
            write_metadata_parquet(table, shard, self.passthrough_columns,
                                   local["metadata_file"])
            write_embeddings_parquet(table, vectors, self.model_fingerprint,
                                     local["embeddings_file"])
            reused = pc.sum(table.column("reused")).as_py() or 0
            space = index_space(self.model_fingerprint, projection and hashlib.sha256(
                projection.to_bytes()).hexdigest())
            changes = write_changes_parquet(shard_changes(
                self.previous, shard, num_shards, local["metadata_file"],
                space_changed=bool(self.previous) and self.previous.get("space") != space),
                local["changes_file"])
            indexed = vectors if projection is None else projection.apply(vectors)
            tuned = ann.tune_shard(indexed, self.n_trees, self.seed, self.target_recall,
                                   ann.queries_per_shard(num_shards),
                                   hint=self.previous_search_k(shard, num_shards))
            dimension = indexed.shape[1]
            kept, kept_of = (0, 0) if projection is None else ann.neighbours_kept(
                vectors, indexed, ann.query_sample(len(vectors), ann.queries_per_shard(
                    num_shards, PROJECTION_QUERIES)))
            label_queries, label_judged, label_hits = self.label_precision(
                tuned, table, ann.queries_per_shard(num_shards, LABEL_QUERIES))
            del vectors, table, indexed
            tuned.index.save(local["index_file"])
            tuned.index.unload()
            summary = {"shard": shard, **files, "items": spill.count, "reused": reused,
                       **changes,
                       "bytes": os.path.getsize(local["index_file"]),
                       "sha256": sha256_of_file(local["index_file"]),
                       "metadata_sha256": sha256_of_file(local["metadata_file"]),
                       "changes_sha256": sha256_of_file(local["changes_file"]),
                       "dimension": dimension,
                       "n_trees": tuned.n_trees, "search_k": tuned.search_k,
                       "recall_at_10": round(tuned.recall, 6), "recall_queries": tuned.queries,
                       "ranked": tuned.ranked, "rank_judged": tuned.judged,
                       "neighbours_kept": kept, "neighbours_judged": kept_of,
                       "label_queries": label_queries, "label_judged": label_judged,
                       "label_hits": label_hits}
            with ThreadPoolExecutor(len(files)) as pool:  # side by side: one slow upload
                list(pool.map(lambda key: storage.upload_file(
                    local[key], join(self.version_dir, files[key])), files))
        counter("indexed").inc(spill.count)
        return summary


    def label_precision(self, tuned, table: pa.Table, queries: int) -> tuple:
        """(queries, labelled neighbours, those sharing the query's label) of up to
        ``queries`` labelled items of the shard: those whose sha256(item_id) is smallest,
        so that the same items are asked night after night and the quality gate compares
        like with like (rows spread by position gave 0.862 and 0.822 for two nights that
        differ in 1.5% of their items; the same items, 0.872 and 0.855)."""
        if not self.label_column:
            return 0, 0, 0
        labels = [label_of(value) for value in table.column(self.label_column).to_pylist()]
        item_ids = table.column("item_id").to_pylist()
        labelled = sorted((row for row, label in enumerate(labels) if label),
                          key=lambda row: caption_transfer.sample_key(item_ids[row]))
        return ann.label_hits(tuned.index, labels, labelled[:queries], tuned.search_k)

    def previous_search_k(self, shard: int, num_shards: int) -> Optional[int]:
        """The search_k the previous version chose for this shard, as a first guess."""
        shards = (self.previous or {}).get("shards") or []
        return shards[shard].get("search_k") if len(shards) == num_shards else None

    def caption(self, table: pa.Table, vectors: np.ndarray, caption_model) -> pa.Table:
        """The shard's captions in the catalog's words (models.caption_transfer), where its
        vectors are together anyway; titles and other catalog text are left as they are."""
        texts = list(zip(*(table.column(c).to_pylist() for c in self.text_columns))) \
            or [()] * table.num_rows
        captions, sources, confidence = caption_transfer.caption_items(
            caption_model, texts, table.column("colors").to_pylist(), vectors,
            table.column("caption").to_pylist(),
            table.column("caption_confidence").fill_null(0.0).to_pylist())
        for name, values in (("caption", pa.array(captions, pa.string())),
                             ("caption_source", pa.array(sources, pa.string())),
                             ("caption_confidence", pa.array(confidence, pa.float32()))):
            table = table.set_column(table.schema.get_field_index(name), name, values)
        return table


class _CompleteShard(beam.DoFn):
    """Shard number -> its summary: the built one, or an empty shard written now."""

    def __init__(self, build_shard: BuildShard):
        self.build_shard = build_shard

    def process(self, shard: int, built: dict, num_shards: int, projection=None):
        yield built[shard] if shard in built else self.build_shard.build(
            shard, [], num_shards, projection=projection)


class BuildShards(beam.PTransform):
    """(shard, records) groups -> one summary per shard, 0..num_shards-1, empty shards
    included, so a version always has ``num_shards`` of each file (``num_shards``: a
    one-element PCollection; ``caption_model``: one from transforms.caption_transfer)."""

    def __init__(self, build_shard: BuildShard, num_shards, caption_model=None,
                 projection=None):
        super().__init__()
        self.build_shard, self.num_shards = build_shard, num_shards
        self.caption_model, self.projection = caption_model, projection

    def expand(self, groups):
        num_shards = beam.pvalue.AsSingleton(self.num_shards)
        caption_model = [] if self.caption_model is None else [
            beam.pvalue.AsSingleton(self.caption_model)]
        projection = {} if self.projection is None else {
            "projection": beam.pvalue.AsSingleton(self.projection)}
        built = (groups
                 | "BuildShard" >> beam.ParDo(self.build_shard, num_shards, *caption_model,
                                              **projection)
                 | "ByShard" >> beam.Map(lambda summary: (summary["shard"], summary)))
        return (self.num_shards
                | "EveryShard" >> beam.FlatMap(lambda count: list(range(count)))
                | "CompleteShard" >> beam.ParDo(_CompleteShard(self.build_shard),
                                                beam.pvalue.AsDict(built), num_shards,
                                                **projection))
