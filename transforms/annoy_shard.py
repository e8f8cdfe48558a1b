"""BuildAnnoyShard: one Annoy index per shard, tuned to the recall target and
byte-reproducible. Same items + same options -> same bytes (sorted ids, fixed seed, one
thread, deterministic tuning), so a retried bundle rewrites the same file under the same
name. The shard's recall@10 against exact search is measured here, where its vectors are."""

from __future__ import annotations

import os
import tempfile

import apache_beam as beam
import numpy as np

from catalog_index import ann, storage
from catalog_index.schema import index_file, join
from catalog_index.storage import sha256_of_file
from transforms.errors import counter


class BuildAnnoyShard(beam.DoFn):
    def __init__(self, version_dir: str, num_shards: int, dimension: int, n_trees: int,
                 seed: int, target_recall: float):
        self.version_dir, self.num_shards, self.dimension = version_dir, num_shards, dimension
        self.n_trees, self.seed, self.target_recall = n_trees, seed, target_recall

    def process(self, shard_items):
        shard, items = shard_items
        vectors = np.asarray([item["embedding"] for item in items], dtype=np.float32).reshape(
            len(items), self.dimension)
        tuned = ann.tune_shard(vectors, self.n_trees, self.seed, self.target_recall,
                               ann.queries_per_shard(self.num_shards))
        relative = index_file(shard, self.num_shards)
        with tempfile.TemporaryDirectory() as scratch:
            local = os.path.join(scratch, "shard.ann")
            tuned.index.save(local)
            tuned.index.unload()
            summary = {"shard": shard, "index_file": relative, "items": len(items),
                       "bytes": os.path.getsize(local), "sha256": sha256_of_file(local),
                       "n_trees": tuned.n_trees, "search_k": tuned.search_k,
                       "recall_at_10": round(tuned.recall, 6), "recall_queries": tuned.queries}
            storage.upload_file(local, join(self.version_dir, relative))
        counter("indexed").inc(len(items))
        yield summary
