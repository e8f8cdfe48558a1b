"""The reader of a many-shard version: shards searched side by side and merged as one
search after another would."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from benchmarks.scale import write_synthetic_version
from search import PublishedIndex
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
