"""The Parquet half of the artifact contract: a shard's metadata and embeddings files, and
WriteErrors."""

from __future__ import annotations

import os
import tempfile

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from catalog_index import storage
from catalog_index.schema import (EMBEDDINGS_SCHEMA, ERRORS_PREFIX, ERRORS_SCHEMA,
                                  metadata_schema, shard_suffix, join)


# Rows per Parquet row group. A group is encoded in memory before it is written (16,384
# vectors of 1,280 floats: 84 MB), and embedding list offsets are int32, so a group must
# hold fewer than 2**31 floats.
ROWS_PER_GROUP = 16_384


def write_metadata_parquet(table: pa.Table, shard: int, passthrough_columns, path: str) -> None:
    """The metadata Parquet of one shard from its rows sorted by item_id (``table``, as
    :class:`transforms.shard.ShardSpill` sorts them): annoy_id is the row number."""
    schema = metadata_schema(passthrough_columns)
    generated = {"shard": pa.array(np.full(table.num_rows, shard, dtype=np.int32)),
                 "annoy_id": pa.array(np.arange(table.num_rows, dtype=np.int32))}
    columns = [generated[field.name] if field.name in generated else table.column(field.name)
               for field in schema]
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        writer.write_table(pa.Table.from_arrays(columns, schema=schema),
                           row_group_size=ROWS_PER_GROUP)


def write_embeddings_parquet(table: pa.Table, vectors: np.ndarray, model_fingerprint: str,
                             path: str) -> None:
    """item_id and sha256 of each row of ``table``, the model fingerprint, the row's vector
    (``vectors[row]``) and source stamp, in order; vectors go to Arrow as float32 buffers."""
    dimension = vectors.shape[1]
    with pq.ParquetWriter(path, EMBEDDINGS_SCHEMA, compression="zstd") as writer:
        for start in range(0, max(table.num_rows, 1), ROWS_PER_GROUP):
            rows = table.slice(start, ROWS_PER_GROUP)
            flat = vectors[start:start + rows.num_rows].ravel()
            offsets = np.arange(rows.num_rows + 1, dtype=np.int64) * dimension
            writer.write_table(pa.Table.from_arrays([
                rows.column("item_id"), rows.column("sha256"),
                pa.array([model_fingerprint] * rows.num_rows, pa.string()),
                # pa.int32() refuses (raises on) an offset past 2**31 - 1 instead of wrapping.
                pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat)),
                rows.column("source_stamp"),
            ], schema=EMBEDDINGS_SCHEMA))


class _WriteErrorsFile(beam.DoFn):
    """Every error row into one Parquet file, sorted, written 10,000 rows at a time."""

    def __init__(self, path: str):
        self.path = path

    def process(self, keyed):
        _, rows = keyed
        with tempfile.TemporaryDirectory() as scratch:
            local = os.path.join(scratch, "errors.parquet")
            count = 0
            with pq.ParquetWriter(local, ERRORS_SCHEMA, compression="zstd") as writer:
                # Sorted, so that the file is the same bytes whatever order failures came
                # in (downloads end in any order): the one stage that holds every error row.
                ordered = sorted((row for row in rows if row is not None), key=_error_order)
                for chunk in _chunks(ordered, 10_000):
                    writer.write_table(pa.Table.from_pylist(chunk, schema=ERRORS_SCHEMA))
                    count += len(chunk)
            storage.upload_file(local, self.path)
        yield {"errors_file": self.path, "rows": count}


def _error_order(row: dict):
    return tuple("" if row.get(key) is None else str(row[key]) for key in ERRORS_SCHEMA.names)


def _chunks(iterable, size):
    chunk = []
    for row in iterable:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class WriteErrors(beam.PTransform):
    """All dead letters into ``errors/part-00000-of-00001.parquet`` (written even when
    empty). Errors are few next to items, so one file; it is written in a streaming way."""

    def __init__(self, version_dir: str):
        super().__init__()
        self.path = join(version_dir, f"{ERRORS_PREFIX}-{shard_suffix(0, 1)}.parquet")

    def expand(self, errors):
        always = errors.pipeline | "EvenIfNoErrors" >> beam.Create([(0, None)])
        return ((errors | "OneKey" >> beam.Map(lambda row: (0, row)), always)
                | "WithSentinel" >> beam.Flatten()
                | "Together" >> beam.GroupByKey()
                | "WriteErrorsFile" >> beam.ParDo(_WriteErrorsFile(self.path)))
