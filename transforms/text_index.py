"""BuildTextIndex: the version's text index (catalog_index.text_index), built once every
shard's metadata is written, from those files; its files are checksummed in the manifest.

One process builds it, reading one shard's metadata file at a time (its text columns only,
a few thousand rows at a time), so its memory follows the index, not the catalog."""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import pyarrow.parquet as pq

from catalog_index import storage
from catalog_index.schema import join
from catalog_index.storage import sha256_of_file
from catalog_index.text_index import (ROWS_PER_BATCH, TEXT_DIR, build_text_index,
                                      text_columns)


class _BuildTextIndex(beam.DoFn):
    def __init__(self, version_dir: str):
        self.version_dir = version_dir

    def process(self, _unused, shard_summaries):
        shards = sorted(shard_summaries, key=lambda summary: summary["shard"])
        with tempfile.TemporaryDirectory() as scratch:
            folder = os.path.join(scratch, TEXT_DIR)
            names = build_text_index(self._metadata(shards, scratch), folder)
            files = [{"file": f"{TEXT_DIR}/{name}",
                      "bytes": os.path.getsize(os.path.join(folder, name)),
                      "sha256": sha256_of_file(os.path.join(folder, name))} for name in names]
            with ThreadPoolExecutor(max(1, len(names))) as pool:  # side by side
                list(pool.map(lambda name: storage.upload_file(
                    os.path.join(folder, name), join(self.version_dir, f"{TEXT_DIR}/{name}")),
                    names))
        yield {"library": "bm25s", "documents": sum(s["items"] for s in shards), "files": files}

    def _metadata(self, shards, scratch):
        """The text columns of the shards' metadata, in shard order, in record batches of
        ROWS_PER_BATCH rows; one shard's file on disk at a time."""
        for summary in shards:
            local = os.path.join(scratch, f"metadata-{summary['shard']}.parquet")
            storage.download_file(join(self.version_dir, summary["metadata_file"]), local)
            columns = text_columns(pq.read_schema(local)) + ["caption_source",
                                                              "caption_confidence"]
            yield from storage.parquet_batches(local, ROWS_PER_BATCH, columns)
            os.remove(local)


class BuildTextIndex(beam.PTransform):
    """Shard summaries -> one dict for the manifest's ``text_index``."""

    def __init__(self, version_dir: str):
        super().__init__()
        self.version_dir = version_dir

    def expand(self, shard_summaries):
        return (shard_summaries.pipeline
                | "Once" >> beam.Create([None])
                | "BuildTextIndex" >> beam.ParDo(_BuildTextIndex(self.version_dir),
                                                 beam.pvalue.AsList(shard_summaries)))
