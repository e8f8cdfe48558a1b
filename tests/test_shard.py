"""The shard stage streams: a shard's items arrive as an iterable read once, go to disk,
and come back sorted; the files equal what the in-memory stage of before wrote."""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import pyarrow
import pyarrow.parquet as pq
import pytest

from transforms.reuse import PREVIOUS_VECTOR
from catalog_index.sizing import shard_count
from transforms.shard import BuildShard, shard_record

DIMENSION = 1280
# Written by the in-memory shard stage this one replaced (a list of item dicts, sorted in
# Python; commit cf76230) for synthetic_items() as shard 2 of 4: Annoy 1.17.3, 16 trees,
# seed 42. The Parquet files of that run had these digests with pyarrow 25.0.1; the
# Parquet files changed once since, by design, with schema 2: the metadata file gained
# caption_source and caption_confidence, and both files' schemas say schema_version 2.
# The Parquet files as of schema 4: their Arrow metadata names the schema version (schema
# 3's were d671f7b1... and b5190978...; schema 2's embeddings 45017235..., before
# source_stamp).
# Pinned again when Annoy came to be compiled with portable flags (native/install_annoy.sh):
# the .ann digest of before (5d3bf439...) was that of an extension compiled with
# -march=native -ffast-math on one CPU, and AVX-512 CPUs wrote 9fc24a98.... The vectors
# are now made unit length with an exact sum (unit()), so the embeddings file changed too
# (98b0a186... before). These digests hold on every x86-64 CPU: tests/test_native.py
# checks the .ann one on an emulated CPU of another kind.
BEFORE = {"index/shard-00002-of-00004.ann":
          "cb5a108186046911cf48432711d2a12540c3573510bc77707f1fda3834501f30",
          "metadata/part-00002-of-00004.parquet":
          "7c9c5d2847238fc6234175150864203b270957177e5dd762d40875114425138b",
          "embeddings/part-00002-of-00004.parquet":
          "3b8e94d478c8786867fb1817dc678d67adaa7329b576109a3335a5a9d0d90564"}


def synthetic_items(count=300, dimension=DIMENSION, seed=7):
    """Captioned items in a shuffled order, as the Caption stage hands them on."""
    rng = np.random.default_rng(seed)
    items = []
    for n in rng.permutation(count):
        vector = unit(rng.standard_normal(dimension).astype(np.float32))
        items.append({"item_id": f"sku-{n:04d}", "image_uri": f"/images/{n}.jpg",
                      "passthrough": {"title": f"Product {n}" if n % 3 else None,
                                      "category": "shoes"},
                      "sha256": hashlib.sha256(str(n).encode()).hexdigest(),
                      "width": 100 + int(n), "height": 200, "embedding": vector,
                      "caption": f"red product {n}",
                      "labels": [{"label": "sneaker", "score": 0.5},
                                 {"label": "clog", "score": 0.25}],
                      "colors": [{"name": "red", "fraction": 0.75}]})
    return items


def unit(vector: np.ndarray) -> np.ndarray:
    """``vector`` scaled to unit length with the same float32 bits on every CPU: an exact
    sum (NumPy's norm goes through BLAS, whose kernels sum in another order on each CPU)."""
    norm = math.sqrt(math.fsum(float(value) ** 2 for value in vector))
    return (vector / np.float32(norm)).astype(np.float32)


class OnceOnly:
    """An iterable that can be iterated one time, as a shuffle's grouped values may be."""

    def __init__(self, values):
        self.values, self.used = values, False

    def __iter__(self):
        assert not self.used, "the shard's items were iterated twice"
        self.used = True
        return (value for value in self.values)


def build(folder, items, shard=2, num_shards=4, previous=None):
    stage = BuildShard(str(folder), ["category", "title"], DIMENSION, n_trees=16, seed=42,
                       target_recall=0.95, model_fingerprint="fp", previous=previous)
    return stage.build(shard, OnceOnly([shard_record(item) for item in items]), num_shards)


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_a_shard_read_once_writes_the_files_of_before(tmp_path):
    items = synthetic_items()
    summary = build(tmp_path, items)
    assert summary["items"] == 300
    assert digest(tmp_path / "index/shard-00002-of-00004.ann") == BEFORE[summary["index_file"]]
    assert summary["sha256"] == BEFORE[summary["index_file"]]
    if pyarrow.__version__ == "25.0.1":  # Parquet's bytes name the writer's version
        for name in (summary["metadata_file"], summary["embeddings_file"]):
            assert digest(tmp_path / name) == BEFORE[name], name

    metadata = pq.read_table(tmp_path / summary["metadata_file"]).to_pylist()
    by_id = {item["item_id"]: item for item in items}
    assert [row["item_id"] for row in metadata] == sorted(by_id)
    assert [row["annoy_id"] for row in metadata] == list(range(300))
    assert {row["shard"] for row in metadata} == {2}
    first = metadata[0]
    source = by_id[first["item_id"]]
    assert first["title"] == source["passthrough"]["title"]
    assert first["labels"] == source["labels"] and first["colors"] == source["colors"]
    vectors = pq.read_table(tmp_path / summary["embeddings_file"]).to_pylist()
    assert [row["item_id"] for row in vectors] == sorted(by_id)
    for row in vectors[:5]:
        np.testing.assert_array_equal(np.asarray(row["vector"], np.float32),
                                      by_id[row["item_id"]]["embedding"])


def test_vectors_left_in_the_previous_version_are_read_from_it(tmp_path):
    """An item reused by an incremental build reaches the shard stage with the (shard, row)
    of its vector in the previous version, not the vector: the shard's files are the bytes
    the vectors themselves give."""
    items = synthetic_items()
    before = build(tmp_path / "before", items)
    rows = {row["item_id"]: row["annoy_id"]
            for row in pq.read_table(tmp_path / "before" / before["metadata_file"]).to_pylist()}
    previous = {"version_dir": str(tmp_path / "before"), "shards": [
        {"shard": n, "metadata_file": f"metadata/part-{n:05d}-of-00004.parquet",
         "embeddings_file": f"embeddings/part-{n:05d}-of-00004.parquet", "search_k": None}
        for n in range(4)]}
    reused = [{**{key: value for key, value in item.items() if key != "embedding"},
               PREVIOUS_VECTOR: (2, rows[item["item_id"]]), "reused": True}
              if number % 3 else item for number, item in enumerate(items)]
    assert sum(PREVIOUS_VECTOR in item for item in reused) == 200
    after = build(tmp_path / "after", reused, previous=previous)
    assert after["reused"] == 200 and after["items"] == 300
    for name in ("index_file", "metadata_file", "embeddings_file"):
        assert digest(tmp_path / "after" / after[name]) == \
            digest(tmp_path / "before" / before[name]), name


def test_an_empty_shard_writes_empty_files(tmp_path):
    summary = build(tmp_path, [], shard=0, num_shards=1)
    assert summary["items"] == 0
    assert pq.read_table(tmp_path / summary["metadata_file"]).num_rows == 0
    assert pq.read_table(tmp_path / summary["embeddings_file"]).num_rows == 0
    assert os.path.getsize(tmp_path / summary["index_file"]) > 0


MIB = 2**20


@pytest.mark.parametrize("rows, width, max_bytes, expected", [
    (0, 265, 256 * MIB, 1), (1, 265, 256 * MIB, 1),
    (253_000, 265, 256 * MIB, 1), (253_300, 265, 256 * MIB, 2),  # 256 MiB / 1,060 B
    (1_000_000, 265, 256 * MIB, 4), (1_000_000, 1280, 256 * MIB, 20),
    (100_000, 265, 256 * MIB, 1), (70_000, 1280, 64 * MIB, 6)])
def test_shards_are_cut_by_the_bytes_of_their_index_vectors(rows, width, max_bytes, expected):
    assert shard_count(rows, width, max_bytes) == expected


def test_staged_vectors_give_the_bytes_of_vectors_in_the_records(tmp_path):
    """StageVectors writes vectors to files of the version's staging area and the records
    carry (file, row): a shard built from such records writes the same files as one built
    from records that carry the vectors, and nothing of the staging area is read twice."""
    from transforms.shard import STAGING_DIR, StageVectors

    items = synthetic_items()
    inline = build(tmp_path / "inline", items)
    version = tmp_path / "staged"
    stage = StageVectors(str(version))
    stage.start_bundle()
    records = [record for item in items for shard, record in stage.process(item, 4)]
    stage.finish_bundle()
    assert all(isinstance(vector, tuple) and vector[0].startswith(STAGING_DIR + "/shard-")
               for _, _, vector in records)
    staged_files = list((version / STAGING_DIR).rglob("*.npy"))
    assert staged_files and all(np.load(path).shape[1] == DIMENSION for path in staged_files)
    stage_shard = BuildShard(str(version), ["category", "title"], DIMENSION, n_trees=16,
                             seed=42, target_recall=0.95, model_fingerprint="fp")
    staged = stage_shard.build(2, OnceOnly(records), 4)
    for name in ("index_file", "metadata_file", "embeddings_file"):
        assert digest(version / staged[name]) == digest(tmp_path / "inline" / inline[name]), name


def test_a_worker_stages_at_most_its_buffer_of_vectors(tmp_path, monkeypatch):
    """Vectors wait in memory until a shard's file is full or the worker's buffer is: then
    the fullest shard's go to a file."""
    from transforms import shard as module

    monkeypatch.setattr(module, "STAGE_BUFFER_BYTES", 40 * DIMENSION * 4)
    monkeypatch.setattr(module, "STAGE_FILE_BYTES", 1 << 30)
    stage = module.StageVectors(str(tmp_path))
    stage.start_bundle()
    most = 0
    for item in synthetic_items(200):
        list(stage.process(item, 8))
        most = max(most, stage._buffered)
    stage.finish_bundle()
    assert most < 40 * DIMENSION * 4 and stage._buffered == 0
    rows = sum(np.load(path).shape[0] for path in tmp_path.rglob("*.npy"))
    assert rows == 200
