"""BuildAnnoyShard: one Annoy index per shard, byte-reproducible, written next to the
metadata. Same items + same options -> same bytes (sorted ids, fixed seed, one thread), so
a retried bundle rewrites the same file under the same name."""

from __future__ import annotations

import os
import tempfile

import apache_beam as beam

from catalog_index import storage
from catalog_index.storage import sha256_of_file
from catalog_index.schema import ANNOY_METRIC, index_file, join
from transforms.errors import counter


def build_annoy_file(vectors, dimension: int, n_trees: int, seed: int, path: str) -> None:
    from annoy import AnnoyIndex

    index = AnnoyIndex(dimension, ANNOY_METRIC)
    index.set_seed(seed)
    for annoy_id, vector in enumerate(vectors):
        index.add_item(annoy_id, vector)
    index.build(n_trees, n_jobs=1)
    index.save(path)
    index.unload()


class BuildAnnoyShard(beam.DoFn):
    def __init__(self, version_dir: str, num_shards: int, dimension: int, n_trees: int,
                 seed: int):
        self.version_dir, self.num_shards, self.dimension = version_dir, num_shards, dimension
        self.n_trees, self.seed = n_trees, seed

    def process(self, shard_items):
        shard, items = shard_items
        relative = index_file(shard, self.num_shards)
        with tempfile.TemporaryDirectory() as scratch:
            local = os.path.join(scratch, "shard.ann")
            build_annoy_file((item["embedding"] for item in items), self.dimension,
                             self.n_trees, self.seed, local)
            summary = {"shard": shard, "index_file": relative, "items": len(items),
                       "bytes": os.path.getsize(local), "sha256": sha256_of_file(local)}
            storage.upload_file(local, join(self.version_dir, relative))
        counter("indexed").inc(len(items))
        yield summary
