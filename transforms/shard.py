"""StageVectors, GroupIntoShards and BuildShards: the catalog becomes ``num_shards`` shards.

A stable hash of item_id picks an item's shard. Inside a shard, items are sorted by item_id
and numbered 0..n-1: their Annoy ids. The number of shards follows the catalog's size and
the index's width (:func:`shard_count`): each shard's index vectors take at most
``--max-shard-mb``. It is computed from the count of catalog rows, so that it is the same
for the same catalog and rebuilds stay byte-identical.

Memory: the shuffle carries no vector: an embedded item's vector is staged in a file of
its shard's (:class:`StageVectors`), a reused item's stays in the previous version, and the
record says where. A shard's records arrive as an iterable read exactly once (on Dataflow
paged in from the shuffle), go to an Arrow file on local disk a few thousand at a time,
and are sorted there; their model vectors go to their sorted place in another file on
local disk, read back a slice at a time for captions, the embeddings file and the
projection. What a worker holds together is the shard's metadata columns and its index
vectors (projected: 265 float32s an item by default), which the Annoy build needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import uuid
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
from transforms.reuse import PREVIOUS_VECTOR, previous_vector_batches
from transforms.write_metadata import write_embeddings_parquet, write_metadata_parquet

STAGING_DIR = "_staging/vectors"  # inside the version, deleted once the shards are built
STAGE_FILE_BYTES = 8 << 20  # a shard's staged vectors go to a file once they are this many
STAGE_BUFFER_BYTES = 64 << 20  # a worker's staged vectors not yet written, at most
# Model vectors of a shard read at a time for captions and the projection (20 MB at
# 1,280-d; each slice costs a few float64 copies of itself on the way)
ROWS_PER_SLICE = 4096
KEPT_SAMPLE = 5_000  # items of a shard among which a projection's kept neighbours are counted
LABEL_QUERIES = 2000  # labelled items of a build whose neighbours' labels the gate checks
PROJECTION_QUERIES = 500  # items whose neighbours the gate checks a projection keeps
SPILL_ROWS = 4096  # rows buffered as Python objects before they go to the spill file
METADATA_KEYS = ("image_uri", "sha256", "width", "height", "caption", "caption_source",
                 "caption_confidence", "labels", "colors", "passthrough", "source_stamp",
                 "reused")
# Spill columns beside the metadata's: the stamp goes to the embeddings file, and whether
# the item was carried forward from the previous version is counted.
SPILL_EXTRA = [pa.field("source_stamp", pa.string()), pa.field("reused", pa.bool_())]


def shard_record(item: dict, vector=None) -> tuple:
    """What a shard keeps of an item, compact for the shuffle: (item_id, its other metadata
    fields as JSON, where its vector is). The vector is its float32 bytes, or, for an item
    reused from the previous version, the (shard, row) of its vector there, or (``vector``)
    the (file, row) of the file it was staged in (:class:`StageVectors`)."""
    fields = {key: item.get(key) for key in METADATA_KEYS}
    if vector is None:
        vector = item[PREVIOUS_VECTOR] if PREVIOUS_VECTOR in item else \
            np.asarray(item["embedding"], dtype=np.float32).tobytes()
    return item["item_id"], json.dumps(fields, separators=(",", ":")).encode(), vector


def is_staged(vector) -> bool:
    """Whether a shard record's vector is a (staged file, row) reference."""
    return isinstance(vector, (tuple, list)) and isinstance(vector[0], str)


class StageVectors(beam.DoFn):
    """item -> (shard, shard record), the record carrying a reference to its vector instead
    of the vector: embedded vectors are written to files of the version's staging area, one
    folder per shard, a few MB a file, and the shard stage reads its own files whole. The
    shuffle then carries a few hundred bytes an item, not 5 KB (1,280 float32s): on a local
    runner that is memory, on Dataflow shuffle bytes, on Dask pickling.

    A worker holds at most STAGE_BUFFER_BYTES of vectors. A retried bundle writes new files
    (random names); the records that reach the shuffle name the files of the attempt that
    succeeded, and the staging area is deleted once the shards are built."""

    def __init__(self, version_dir: str):
        self.version_dir = version_dir

    def start_bundle(self):
        self._buffers = {}  # shard -> (staged file, [vectors])
        self._buffered = 0

    def process(self, item, num_shards: int):
        shard = shard_of(item["item_id"], num_shards)
        if PREVIOUS_VECTOR in item:
            yield shard, shard_record(item)
            return
        vector = np.asarray(item["embedding"], dtype=np.float32)
        if shard not in self._buffers:
            self._buffers[shard] = (staged_file(shard), [])
        staged, vectors = self._buffers[shard]
        vectors.append(vector)
        self._buffered += vector.nbytes
        yield shard, shard_record(item, (staged, len(vectors) - 1))
        if len(vectors) * vector.nbytes >= STAGE_FILE_BYTES:
            self._flush(shard)
        elif self._buffered >= STAGE_BUFFER_BYTES:
            self._flush(max(self._buffers, key=lambda key: len(self._buffers[key][1])))

    def finish_bundle(self):
        for shard in list(self._buffers):
            self._flush(shard)

    def _flush(self, shard: int) -> None:
        staged, vectors = self._buffers.pop(shard)
        buffer = io.BytesIO()
        np.save(buffer, np.stack(vectors))
        storage.write_bytes(join(self.version_dir, staged), buffer.getvalue())
        self._buffered -= sum(vector.nbytes for vector in vectors)


def staged_file(shard: int) -> str:
    return f"{STAGING_DIR}/shard-{shard:05d}/{uuid.uuid4().hex}.npy"


class GroupIntoShards(beam.PTransform):
    """items -> (shard, iterable of shard records); ``num_shards`` is a one-element
    PCollection. Shards without items do not appear: :class:`BuildShards` writes them.
    Embedded vectors are staged in ``version_dir`` (:class:`StageVectors`)."""

    def __init__(self, num_shards, version_dir: str):
        super().__init__()
        self.num_shards, self.version_dir = num_shards, version_dir

    def expand(self, items):
        return (items
                | "StageVectors" >> beam.ParDo(StageVectors(self.version_dir),
                                               beam.pvalue.AsSingleton(self.num_shards))
                | "GroupByShard" >> beam.GroupByKey())


class ShardSpill:
    """Shard records appended to an Arrow IPC file in ``folder``, a batch at a time,
    without their vectors: a vector in the record goes to a file of its own beside it; for
    one elsewhere (the previous version, a staged file) its place is remembered (spill row
    -> (shard, row) in ``previous``, -> (file, row) in ``staged``)."""

    def __init__(self, folder: str, passthrough_columns, dimension: int):
        self.passthrough_columns = list(passthrough_columns)
        self.dimension, self.folder = dimension, folder
        fields = [field for field in metadata_schema(self.passthrough_columns)
                  if field.name not in ("shard", "annoy_id")]
        self.schema = pa.schema(fields + SPILL_EXTRA)
        self.path = os.path.join(folder, "spill.arrow")
        self._writer = pa.ipc.new_file(self.path, self.schema)
        self._rows = []
        self.count = 0
        self.previous, self.staged = {}, {}
        # vectors that came in the records, in arrival order, and their spill rows
        self._inline = open(os.path.join(folder, "inline.f32"), "w+b")
        self._inline_rows = []

    def add(self, record: tuple) -> None:
        item_id, fields, vector = record
        fields = json.loads(fields)
        passthrough = fields.pop("passthrough", None) or {}
        row = {name: passthrough.get(name) for name in self.passthrough_columns}
        row.update(fields, item_id=item_id)
        row["reused"] = bool(row.get("reused"))
        position = self.count + len(self._rows)
        if isinstance(vector, bytes):
            self._inline.write(vector)
            self._inline_rows.append(position)
        elif is_staged(vector):
            self.staged[position] = tuple(vector)
        else:
            self.previous[position] = tuple(vector)
        self._rows.append(row)
        if len(self._rows) >= SPILL_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
            self.count += len(self._rows)
            self._rows = []

    def sorted(self, previous: Optional[dict] = None, version_dir: Optional[str] = None):
        """-> (metadata table sorted by item_id, :class:`SortedVectors` in the same order).
        Vectors left in the previous version ({version_dir, shards}) are read from there,
        staged ones from their files under ``version_dir``.

        What stays in memory is the metadata columns: the vectors go, a batch at a time,
        to their sorted place in a file on local disk, from which they are read in slices.
        The spill is read with plain reads (a memory map's pages would count as the
        process's memory once touched)."""
        self._flush()
        self._writer.close()
        with pa.OSFile(self.path) as source:
            reader = pa.ipc.open_file(source)
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        item_ids = pa.concat_arrays([batch.column("item_id") for batch in batches]) \
            if batches else pa.array([], pa.string())
        order = pc.sort_indices(item_ids).to_numpy()
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        vectors = SortedVectors(os.path.join(self.folder, "vectors.f32"), len(order),
                                self.dimension)
        with vectors.writing() as put:
            self._inline.seek(0)
            rows = np.asarray(self._inline_rows, dtype=np.int64)
            for start in range(0, len(rows), ROWS_PER_SLICE):
                chunk = rows[start:start + ROWS_PER_SLICE]
                put(position[chunk], np.fromfile(self._inline, dtype=np.float32, count=len(
                    chunk) * self.dimension).reshape(len(chunk), self.dimension))
            self._inline.close()
            if self.previous:
                rows = np.fromiter(self.previous, dtype=np.int64, count=len(self.previous))
                for found, batch in previous_vector_batches(previous, self.previous.values()):
                    put(position[rows[found]], batch)
            for staged, rows in self._staged_by_file().items():
                put(position[rows[:, 0]], read_staged(version_dir, staged)[rows[:, 1]])
        table = pa.Table.from_batches(batches, schema=self.schema).take(order) \
            if batches else self.schema.empty_table()
        return table, vectors

    def _staged_by_file(self) -> dict:
        """staged file -> [[spill row, row in the file]]."""
        by_file = {}
        for position, (staged, row) in self.staged.items():
            by_file.setdefault(staged, []).append((position, row))
        return {staged: np.asarray(rows, dtype=np.int64) for staged, rows in by_file.items()}


def read_staged(version_dir: str, staged: str) -> np.ndarray:
    """A staged file's vectors [rows, dimension] float32."""
    return np.load(io.BytesIO(storage.read_bytes(join(version_dir, staged))))


class SortedVectors:
    """A shard's vectors [rows, dimension] float32 in a file on local disk, in sorted
    order: written row by row to their place, read back a slice at a time
    (``vectors[start:stop]``), so that a shard never holds its model vectors in memory."""

    def __init__(self, path: str, rows: int, dimension: int):
        self.path, self.shape = path, (rows, dimension)
        self._row_bytes = 4 * dimension

    def __len__(self) -> int:
        return self.shape[0]

    @contextlib.contextmanager
    def writing(self):
        """Yields put(rows, vectors): vectors[i] goes to row rows[i]."""
        with open(self.path, "wb") as stream:
            stream.truncate(self.shape[0] * self._row_bytes)
            descriptor = stream.fileno()

            def put(rows, vectors):
                data = np.ascontiguousarray(vectors, dtype=np.float32)
                for row, vector in zip(rows.tolist(), data):
                    os.pwrite(descriptor, vector.tobytes(), row * self._row_bytes)

            yield put

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("SortedVectors reads contiguous slices")
        count = max(stop - start, 0)
        with open(self.path, "rb") as stream:
            stream.seek(start * self._row_bytes)
            data = np.fromfile(stream, dtype=np.float32, count=count * self.shape[1])
        return data.reshape(count, self.shape[1])

    def take(self, rows) -> np.ndarray:
        """The vectors at ``rows`` (any order), one read each."""
        result = np.empty((len(rows), self.shape[1]), np.float32)
        with open(self.path, "rb") as stream:
            for index, row in enumerate(rows):
                result[index] = np.frombuffer(
                    os.pread(stream.fileno(), self._row_bytes, int(row) * self._row_bytes),
                    dtype=np.float32)
        return result

    def slices(self, size: int = ROWS_PER_SLICE):
        """Yields (start, vectors[start:start + size]) over every row."""
        for start in range(0, self.shape[0], size):
            yield start, self[start:start + size]


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
            table, vectors = spill.sorted(self.previous, self.version_dir)
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
            indexed = index_vectors(vectors, projection)
            tuned = ann.tune_shard(indexed, self.n_trees, self.seed, self.target_recall,
                                   ann.queries_per_shard(num_shards),
                                   hint=self.previous_search_k(shard, num_shards))
            dimension = indexed.shape[1]
            kept, kept_of = (0, 0) if projection is None else self.neighbours_kept(
                vectors, indexed, num_shards)
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


    @staticmethod
    def neighbours_kept(vectors: "SortedVectors", indexed: np.ndarray, num_shards: int) -> tuple:
        """How much of the model space's neighbourhoods the projection keeps, among up to
        KEPT_SAMPLE items of the shard spread evenly over it (exact search among them, in
        both spaces: catalog_index.ann.neighbours_kept)."""
        sample = ann.query_sample(len(indexed), KEPT_SAMPLE)
        queries = ann.query_sample(len(sample), ann.queries_per_shard(num_shards,
                                                                      PROJECTION_QUERIES))
        return ann.neighbours_kept(vectors.take(sample), indexed[sample], queries)

    def label_precision(self, tuned, table: pa.Table, queries: int) -> tuple:
        """(queries, labelled neighbours, those sharing the query's label) of up to
        ``queries`` labelled items of the shard: those whose sha256(item_id) is smallest,
        so that the same items are asked night after night and the quality gate compares
        like with like (rows spread by position gave 0.862 and 0.822 for two nights that
        differ in 1.5% of their items; the same items, 0.862 and 0.844: docs/benchmarks.md)."""
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

    def caption(self, table: pa.Table, vectors: "SortedVectors", caption_model) -> pa.Table:
        """The shard's captions in the catalog's words (models.caption_transfer), where its
        vectors are together anyway, a slice at a time; titles and other catalog text are
        left as they are."""
        if not table.num_rows:
            return table
        captions, sources, confidence = [], [], []
        for start, chunk in vectors.slices():
            rows = table.slice(start, len(chunk))
            texts = list(zip(*(rows.column(c).to_pylist() for c in self.text_columns))) \
                or [()] * rows.num_rows
            more = caption_transfer.caption_items(
                caption_model, texts, rows.column("colors").to_pylist(), chunk,
                rows.column("caption").to_pylist(),
                rows.column("caption_confidence").fill_null(0.0).to_pylist())
            captions += more[0]
            sources += more[1]
            confidence.append(np.asarray(more[2], np.float32))
        for name, values in (("caption", pa.array(captions, pa.string())),
                             ("caption_source", pa.array(sources, pa.string())),
                             ("caption_confidence",
                              pa.array(np.concatenate(confidence), pa.float32()))):
            table = table.set_column(table.schema.get_field_index(name), name, values)
        return table


def index_vectors(vectors: "SortedVectors", projection=None) -> np.ndarray:
    """The shard's vectors as the Annoy index holds them, in memory: projected a slice at a
    time (``projection``), or the model's own."""
    if projection is None:
        return vectors[0:len(vectors)]
    indexed = np.empty((len(vectors), projection.dims), np.float32)
    for start, chunk in vectors.slices():
        indexed[start:start + len(chunk)] = projection.apply(chunk)
    return indexed


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
        complete = (self.num_shards
                    | "EveryShard" >> beam.FlatMap(lambda count: list(range(count)))
                    | "CompleteShard" >> beam.ParDo(_CompleteShard(self.build_shard),
                                                    beam.pvalue.AsDict(built), num_shards,
                                                    **projection))
        return (groups.pipeline
                | "OnceShardsAreBuilt" >> beam.Create([None])
                | "DropStagedVectors" >> beam.FlatMap(
                    _drop_staging, self.build_shard.version_dir, beam.pvalue.AsList(complete)))


def _drop_staging(_unused, version_dir: str, summaries):
    """Every shard is built: the staged vectors are in the shards' embeddings files now.
    -> the shards' summaries, in shard order."""
    storage.delete_tree(join(version_dir, STAGING_DIR.split("/")[0]))
    yield from sorted(summaries, key=lambda summary: summary["shard"])
