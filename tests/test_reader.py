"""The reader of a many-shard version: shards searched side by side and merged as one
search after another would, a cache that checks each file once and remembers it, metadata
memory-mapped from Arrow copies instead of read into memory."""

from __future__ import annotations

import gc
import json
import os
import shutil
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from benchmarks.scale import write_synthetic_version
from catalog_index import storage
from catalog_index.schema import version_dir
from search import IndexIntegrityError, PublishedIndex
from search import cache as reader_cache
from search import index as reader_index

DIRECTIONS = 150  # items n, n + 150, n + 300, ... have the same vector: exact ties
ITEMS, PER_SHARD, DIMENSION = 1_200, 150, 16


def tied_vectors(numbers):
    directions = np.random.default_rng(7).standard_normal((DIRECTIONS, DIMENSION))
    return directions[np.asarray(numbers) % DIRECTIONS]


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> str:
    """A version of 1,200 items in 8 shards, every vector held by 8 items (spread over
    the shards by the hash of their ids), written by the build's shard code."""
    root = str(tmp_path_factory.mktemp("reader") / "index")
    write_synthetic_version(root, ITEMS, DIMENSION, PER_SHARD, target_recall=0.0,
                            vectors=tied_vectors)
    return root


@pytest.fixture
def copy(version, tmp_path, monkeypatch) -> str:
    """A copy of the version's root that a test may change. Its files were all copied
    just now (their ctime): the cache is told to trust them all the same (RACY_NS 0)."""
    root = str(tmp_path / "copy")
    shutil.copytree(version, root)
    monkeypatch.setattr(reader_cache, "RACY_NS", 0)
    return root


@pytest.fixture
def cache(tmp_path) -> str:
    return str(tmp_path / "cache")


def serial_nearest(self, vector, k, search_k=None, exclude=()):
    """The reader's _nearest as it was: each shard searched after the other, every hit's
    item_id looked up, all sorted."""
    vector = self.in_index_space(vector)
    vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
    wanted = k + len(exclude)
    found = []
    for number, shard in enumerate(self.shards):
        ids, distances = shard.annoy.get_nns_by_vector(
            vector, wanted, search_k=search_k or shard.search_k, include_distances=True)
        item_ids = [shard.item_ids[i].as_py() for i in ids]
        found.extend((1.0 - d * d / 2.0, item_id, number, i)
                     for i, d, item_id in zip(ids, distances, item_ids))
    excluded = set(exclude)
    return sorted((hit for hit in found if hit[1] not in excluded),
                  key=lambda hit: (-hit[0], hit[1]))[:k]


def answers(index, queries) -> list:
    """Every query's hits as (item_id, score, metadata row)."""
    return [[(hit.item_id, hit.score, hit.metadata) for hit in query(index)]
            for query in queries]


def test_shards_searched_side_by_side_give_the_serial_top_k(version, cache, monkeypatch):
    monkeypatch.setattr(reader_index, "_cores", lambda: 4)  # 4 threads, whatever the machine
    index = PublishedIndex.open(version, cache_dir=cache)
    assert len(index.shards) == 8 and len(index._groups) == 4
    vectors = tied_vectors(np.arange(DIRECTIONS))
    noise = np.random.default_rng(1).standard_normal((20, DIMENSION)) * 0.3
    item_ids = list(index.item_ids())
    queries = [lambda index, v=v, k=k: index.query_vector(v, k=k)
               for v in [*vectors[:20], *(vectors[:20] + noise)] for k in (1, 5, 8, 10, 30)]
    queries += [lambda index, item=item: index.query_item(item, k=10) for item in item_ids[:60]]
    queries += [lambda index, v=v: index.query(vector=v, text="dress", k=10,
                                               exclude=item_ids[:3]) for v in vectors[:20]]
    side_by_side = answers(index, queries)
    with monkeypatch.context() as serial:
        serial.setattr(PublishedIndex, "_nearest", serial_nearest)
        assert answers(index, queries) == side_by_side
    # the ties were there to break: 8 items score the same for a vector of the version
    hits = index.query_vector(vectors[3], k=10)
    assert len({hit.score for hit in hits[:8]}) == 1
    assert [hit.item_id for hit in hits[:8]] == sorted(
        f"sku-{n:07d}" for n in range(3, ITEMS, DIRECTIONS))
    # and query_item leaves the item out, not one of its twins
    twins = index.query_item("sku-0000003", k=7)
    assert [hit.item_id for hit in twins] == [f"sku-{n:07d}" for n in range(153, ITEMS, 150)]


class SlowAnnoy:
    """An Annoy index whose searches take 50 ms more (sleeping, so without the GIL), and
    that notes which thread ran each and when."""

    def __init__(self, annoy, calls):
        self.annoy, self.calls = annoy, calls

    def get_nns_by_vector(self, *args, **kwargs):
        started = time.perf_counter()
        time.sleep(0.05)
        found = self.annoy.get_nns_by_vector(*args, **kwargs)
        self.calls.append((threading.get_ident(), started, time.perf_counter()))
        return found

    def __getattr__(self, name):
        return getattr(self.annoy, name)


def test_shards_are_searched_on_a_pool_made_once(version, cache, monkeypatch):
    monkeypatch.setattr(reader_index, "_cores", lambda: 4)
    index = PublishedIndex.open(version, cache_dir=cache)
    calls = []
    for shard in index.shards:
        shard.annoy = SlowAnnoy(shard.annoy, calls)
    pool = index._pool
    for item_id in ("sku-0000001", "sku-0000002", "sku-0000003"):
        index.query_item(item_id, k=5)
    assert index._pool is pool and len(calls) == 3 * 8
    first = sorted(calls[:8], key=lambda call: call[1])
    assert len({thread for thread, _, _ in first}) == 4  # the caller and 3 pool threads
    overlapping = max(sum(start <= started < end for _, start, end in first)
                      for _, started, _ in first)
    assert overlapping >= 2  # two shards' searches at once, at least
    assert len({thread for thread, _, _ in calls}) == 4  # the same threads every time
    assert len(index._pool._threads) == 3


# ---------------------------------------------------------------- the cache remembers


def count_hashes(monkeypatch) -> list:
    """Each file sha256_of_file reads from now on."""
    hashed, real = [], storage.sha256_of_file

    def counting(path):
        hashed.append(os.path.relpath(path))
        return real(path)

    monkeypatch.setattr(storage, "sha256_of_file", counting)
    return hashed


def version_files(root) -> list:
    manifest = json.load(open(os.path.join(version_dir(root, "synthetic"), "manifest.json")))
    files = [entry["file"] for entry in manifest["text_index"]["files"]]
    for shard in manifest["index"]["shards"]:
        files += [shard["index_file"], shard["metadata_file"], shard["changes_file"]]
    return files


def test_a_second_open_hashes_nothing(copy, cache, monkeypatch):
    hashed = count_hashes(monkeypatch)
    first = PublishedIndex.open(copy, cache_dir=cache)
    files = version_files(copy)
    # every file of the version once, and each Arrow copy of the metadata as it is written
    assert len(hashed) == len(files) + len(first.shards)
    hashed.clear()
    second = PublishedIndex.open(copy, cache_dir=cache)
    assert hashed == []
    queries = [lambda index: index.query_item("sku-0000042", k=10),
               lambda index: index.query_text("dress", k=10)]
    assert answers(second, queries) == answers(first, queries)


def test_a_changed_file_is_hashed_again_and_refused(copy, cache, monkeypatch):
    PublishedIndex.open(copy, cache_dir=cache)
    hashed = count_hashes(monkeypatch)
    shard = os.path.join(version_dir(copy, "synthetic"), "index", "shard-00003-of-00008.ann")
    status = os.stat(shard)
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 2] ^= 0xFF
    with open(shard, "r+b") as stream:  # in place: the same size and inode
        stream.write(data)
    with pytest.raises(IndexIntegrityError, match="shard-00003-of-00008.ann: sha256"):
        PublishedIndex.open(copy, cache_dir=cache)
    assert hashed == [os.path.relpath(shard)]
    # the change hidden from mtime (touch -d): its ctime still moved
    os.utime(shard, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert os.stat(shard).st_mtime_ns == status.st_mtime_ns
    with pytest.raises(IndexIntegrityError, match="shard-00003-of-00008.ann: sha256"):
        PublishedIndex.open(copy, cache_dir=cache)
    # put back as it was, it is checked once more and trusted again
    data[len(data) // 2] ^= 0xFF
    with open(shard, "r+b") as stream:
        stream.write(data)
    os.utime(shard, ns=(status.st_atime_ns, status.st_mtime_ns - 10 * 10**9))
    monkeypatch.setattr(reader_cache, "RACY_NS", 0)  # ctime is now: trust it at once
    hashed.clear()
    PublishedIndex.open(copy, cache_dir=cache)
    assert hashed == [os.path.relpath(shard)]
    hashed.clear()
    PublishedIndex.open(copy, cache_dir=cache)
    assert hashed == []


def test_files_changed_just_before_their_check_are_checked_again(copy, cache, monkeypatch):
    """Timestamps are coarse: a file written in the same tick after its check would keep
    its status. A file whose mtime or ctime is within RACY_NS of its check is hashed at
    the next open too; not the cache's own Arrow copies, written whole before they had
    their name."""
    monkeypatch.setattr(reader_cache, "RACY_NS", 3600 * 10**9)  # every file of the copy
    PublishedIndex.open(copy, cache_dir=cache)
    hashed = count_hashes(monkeypatch)
    PublishedIndex.open(copy, cache_dir=cache)
    folder = version_dir(copy, "synthetic")
    assert sorted(hashed) == sorted(os.path.relpath(os.path.join(folder, name))
                                    for name in version_files(copy))


def test_a_version_rebuilt_in_its_place_is_checked_again(copy, cache, monkeypatch):
    """The record belongs to the version's folder: a version rebuilt in its place (new
    bytes, new manifest) is checked again."""
    PublishedIndex.open(copy, cache_dir=cache)
    hashed = count_hashes(monkeypatch)
    manifest_path = os.path.join(version_dir(copy, "synthetic"), "manifest.json")
    manifest = json.load(open(manifest_path))
    text = manifest["text_index"]["files"][0]
    text["sha256"] = "0" * 64  # the manifest of another build
    json.dump(manifest, open(manifest_path, "w"))
    with pytest.raises(IndexIntegrityError, match=f"{text['file']}: sha256"):
        PublishedIndex.open(copy, cache_dir=cache)
    assert [path for path in hashed if path.endswith(text["file"])]


# ------------------------------------------------------------ metadata memory-mapped


def mapped_ranges(name_part: str) -> list:
    """(start, end) of this process's mappings of files whose path holds ``name_part``."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and name_part in fields[5]:
                start, end = (int(value, 16) for value in fields[0].split("-"))
                ranges.append((start, end))
    return ranges


def buffers(table):
    """Every buffer of every column, its children's (a list's structs' strings) included."""
    return [buffer for column in table.columns for chunk in column.chunks
            for buffer in chunk.buffers() if buffer is not None]


def test_metadata_is_memory_mapped_and_reads_as_the_parquet(version, cache):
    index = PublishedIndex.open(version, cache_dir=cache)
    ranges = mapped_ranges(os.path.join(os.path.realpath(cache), ""))
    assert ranges
    for shard in index.shards:
        assert len(buffers(shard.metadata)) > 20
        for buffer in buffers(shard.metadata):
            assert buffer.size == 0 or any(
                start <= buffer.address and buffer.address + buffer.size <= end
                for start, end in ranges), "a metadata buffer outside the mapped Arrow file"
    folder = version_dir(version, "synthetic")
    for number, shard in enumerate(index.manifest["index"]["shards"]):
        rows = pq.read_table(os.path.join(folder, shard["metadata_file"])).to_pylist()
        assert [index.shards[number].row(i) for i in range(len(rows))] == rows
        assert index.shards[number].metadata.schema == pq.read_schema(
            os.path.join(folder, shard["metadata_file"]))
    assert sorted(index.item_ids()) == [f"sku-{n:07d}" for n in range(ITEMS)]
    assert index.item("sku-0000042")["item_id"] == "sku-0000042"


def test_a_damaged_arrow_copy_is_written_again(version, cache, monkeypatch):
    monkeypatch.setattr(reader_cache, "RACY_NS", 0)  # the version was written just now
    PublishedIndex.open(version, cache_dir=cache)
    gc.collect()  # no reader maps the copies now: one is damaged in place below
    copies = sorted(os.path.join(folder, name) for folder, _, names in os.walk(cache)
                    for name in names if name.endswith(".arrow"))
    assert len(copies) == 8
    with open(copies[2], "r+b") as stream:
        stream.seek(os.path.getsize(copies[2]) // 2)
        stream.write(b"\x00" * 64)
    hashed = count_hashes(monkeypatch)
    index = PublishedIndex.open(version, cache_dir=cache)
    folder = version_dir(version, "synthetic")
    assert [shard.metadata.to_pylist() for shard in index.shards] == [
        pq.read_table(os.path.join(folder, shard["metadata_file"])).to_pylist()
        for shard in index.manifest["index"]["shards"]]
    # the damaged copy was hashed, found wrong, written again and hashed as written
    assert hashed == [os.path.relpath(copies[2])] * 2


def test_without_a_writable_cache_a_local_version_still_opens(version, tmp_path, cache):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    queries = [lambda index: index.query_item("sku-0000042", k=10),
               lambda index: index.query_text("dress", k=10)]
    index = PublishedIndex.open(version, cache_dir=str(not_a_folder))
    assert answers(index, queries) == answers(PublishedIndex.open(version, cache_dir=cache),
                                              queries)


def test_a_reader_outlives_its_cache_and_its_version(copy, cache):
    index = PublishedIndex.open(copy, cache_dir=cache)
    queries = [lambda index: index.query_item("sku-0000042", k=10),
               lambda index: index.query(vector=index.vector("sku-0000007"), text="coat", k=10),
               lambda index: index.query_text("sandal", k=10)]
    expected = answers(index, queries) + [index.item("sku-0000999")]
    shutil.rmtree(cache)
    shutil.rmtree(copy)
    assert answers(index, queries) + [index.item("sku-0000999")] == expected
    assert all(expected[:3])


def test_a_gs_version_is_downloaded_and_hashed_once(version, gcs_bucket, cache, monkeypatch):
    root = f"gs://{gcs_bucket}/index"
    for path in storage.list_files(version):
        storage.upload_file(path, f"{root}/{os.path.relpath(path, version)}")
    downloads, real_download = [], storage.download_file
    monkeypatch.setattr(storage, "download_file",
                        lambda path, local: (downloads.append(path), real_download(path, local)))
    hashed = count_hashes(monkeypatch)
    first = PublishedIndex.open(root, cache_dir=cache)
    assert len(downloads) == len(version_files(version))
    assert len(hashed) == len(downloads) + len(first.shards)  # and the Arrow copies
    downloads.clear()
    hashed.clear()
    second = PublishedIndex.open(root, cache_dir=cache)
    assert downloads == [] and hashed == []
    query = [lambda index: index.query_item("sku-0000042", k=10)]
    assert answers(second, query) == answers(first, query)
