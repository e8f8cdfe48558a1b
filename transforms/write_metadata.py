"""WriteShardMetadata and WriteErrors: the Parquet half of the artifact contract."""

from __future__ import annotations

import hashlib
import io

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from catalog_index import storage
from catalog_index.schema import (EMBEDDINGS_SCHEMA, ERRORS_PREFIX, ERRORS_SCHEMA,
                                  embeddings_file, join, metadata_file, metadata_schema)


def metadata_table(items, passthrough_columns) -> pa.Table:
    schema = metadata_schema(passthrough_columns)
    rows = [{**{name: item["passthrough"].get(name) for name in passthrough_columns},
             **{field.name: item.get(field.name) for field in schema
                if field.name not in passthrough_columns}} for item in items]
    return pa.Table.from_pylist(rows, schema=schema)


def embeddings_table(items, model_fingerprint: str) -> pa.Table:
    return pa.Table.from_pylist(
        [{"item_id": item["item_id"], "sha256": item["sha256"],
          "model_fingerprint": model_fingerprint,
          "vector": item["embedding"].astype("float32").tolist()} for item in items],
        schema=EMBEDDINGS_SCHEMA)


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


class WriteShardParquet(beam.DoFn):
    def __init__(self, version_dir: str, num_shards: int, passthrough_columns,
                 model_fingerprint: str):
        self.version_dir, self.num_shards = version_dir, num_shards
        self.passthrough_columns = list(passthrough_columns)
        self.model_fingerprint = model_fingerprint

    def process(self, shard_items):
        shard, items = shard_items
        metadata = parquet_bytes(metadata_table(items, self.passthrough_columns))
        vectors = parquet_bytes(embeddings_table(items, self.model_fingerprint))
        metadata_path = metadata_file(shard, self.num_shards)
        vectors_path = embeddings_file(shard, self.num_shards)
        storage.write_bytes(join(self.version_dir, metadata_path), metadata)
        storage.write_bytes(join(self.version_dir, vectors_path), vectors)
        yield {"shard": shard, "metadata_file": metadata_path, "embeddings_file": vectors_path,
               "metadata_rows": len(items), "metadata_sha256": hashlib.sha256(metadata).hexdigest()}


class WriteErrors(beam.PTransform):
    """All dead letters into one Parquet file (errors are few), through Beam's file sink."""

    def __init__(self, version_dir: str):
        super().__init__()
        self.version_dir = version_dir

    def expand(self, errors):
        return errors | "WriteErrorsParquet" >> beam.io.WriteToParquet(
            join(self.version_dir, ERRORS_PREFIX), ERRORS_SCHEMA, num_shards=1,
            shard_name_template="-SSSSS-of-NNNNN", file_name_suffix=".parquet")
