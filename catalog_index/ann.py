"""Annoy shards: a reproducible build, exact search for reference, and the choice of
``search_k`` (and, when needed, more trees) that reaches a recall target at the lowest
query cost. Beam-free: the build's shard stage and the benchmarks both use it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from catalog_index.schema import ANNOY_METRIC

K = 10  # recall is measured at 10, the usual page of results
SEARCH_K_MULTIPLIERS = (1, 2, 4, 8, 16, 32, 64, 128)  # x n_trees x K, Annoy's default is 1
MAX_TREE_DOUBLINGS = 2


def build_annoy(vectors: np.ndarray, n_trees: int, seed: int):
    """An in-memory Annoy index over ``vectors`` (ids = row numbers); one thread, fixed
    seed, so the same vectors always give the same bytes."""
    from annoy import AnnoyIndex

    index = AnnoyIndex(vectors.shape[1], ANNOY_METRIC)
    index.set_seed(seed)
    for annoy_id, vector in enumerate(vectors):
        # A row as a list: Annoy reads a list faster than a NumPy row, element by element.
        # (The whole matrix as lists would hold 10,000 x 1,280 Python floats: 400 MB.)
        index.add_item(annoy_id, vector.tolist())
    index.build(n_trees, n_jobs=1)
    return index


def query_sample(count: int, wanted: int) -> np.ndarray:
    """Which rows serve as recall queries: ``wanted`` evenly spread rows (all when fewer)."""
    if count <= wanted:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, wanted).round().astype(int))


# Query rows scored against a whole shard at a time: as many as keep each score matrix to
# about this many floats (16 MB; scoring, partitioning and ranking make a few copies).
SCORES_PER_CHUNK = 4_000_000


def exact_neighbours(vectors: np.ndarray, query_ids: Sequence[int], k: int = K) -> np.ndarray:
    """Brute-force top-k by cosine for each query row, the query itself left out."""
    return _exact_search(vectors, query_ids, k)[0]


# A space ranks a query when its nearest items are nearer than a typical item by more than
# rounding: a projection that collapses the vectors (to zero, or to one direction) scores
# every pair the same, and Annoy and exact search then agree on ties in id order.
RANK_MARGIN = 1e-4


def _exact_search(vectors: np.ndarray, query_ids: Sequence[int], k: int = K) -> tuple:
    """-> (top-k by cosine for each query row, the query itself left out; how many of the
    queries the space ranks, how many could be judged). Queries are judged in a shard of
    more than 2 * K rows (in a smaller one, a few duplicate images would decide): a query
    is ranked when its K-th nearest scores above the (lower) median of the other rows by
    more than RANK_MARGIN."""
    n = len(vectors)
    k = min(k, n - 1)
    chunk = max(1, SCORES_PER_CHUNK // max(n, 1))
    result = np.empty((len(query_ids), k), dtype=np.int64)
    judge_at = K if n > 2 * K else 0
    ranked = 0
    for start in range(0, len(query_ids), chunk):
        ids = np.asarray(query_ids[start:start + chunk])
        scores = vectors[ids] @ vectors.T
        scores[np.arange(len(ids)), ids] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k else np.empty((len(ids), 0), int)
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
        result[start:start + len(ids)] = np.take_along_axis(top, order, axis=1)
        if judge_at:  # the query's own -inf goes first: the others are at 1..n-1
            middle, nearest = n // 2, n - judge_at  # the lower median, the k-th nearest
            parted = np.partition(scores, [middle, nearest], axis=1)
            ranked += int(np.sum(parted[:, nearest] > parted[:, middle] + RANK_MARGIN))
    return result, ranked, len(query_ids) if judge_at else 0


def neighbours_kept(model_vectors: np.ndarray, index_vectors: np.ndarray,
                    query_ids: Sequence[int], k: int = K) -> tuple:
    """-> (how many of the queries' exact k nearest in the model's space are among their
    exact k nearest in the index's (projected) space, out of how many). A projection that
    keeps the catalog's neighbourhoods keeps most (PCA 256 + LDA on Fashion-MNIST: 0.71);
    one that maps the vectors into a space they do not vary in keeps about k / n."""
    if len(query_ids) == 0 or len(model_vectors) < 2:
        return 0, 0
    before = exact_neighbours(model_vectors, query_ids, k)
    after = exact_neighbours(index_vectors, query_ids, k)
    kept = sum(len(set(old) & set(new)) for old, new in zip(before.tolist(), after.tolist()))
    return kept, before.size


def annoy_neighbours(index, query_ids: Sequence[int], search_k: int, k: int = K) -> List[list]:
    found = []
    for query in query_ids:
        ids = index.get_nns_by_item(int(query), k + 1, search_k=search_k)
        found.append([i for i in ids if i != query][:k])
    return found


def recall(found: List[list], exact: np.ndarray) -> float:
    if exact.size == 0:
        return 1.0
    hits = sum(len(set(row) & set(truth)) for row, truth in zip(found, exact.tolist()))
    return hits / exact.size


@dataclass(frozen=True)
class TunedShard:
    index: object  # the AnnoyIndex to save
    n_trees: int
    search_k: int
    recall: float
    queries: int
    ranked: int = 0  # queries whose nearest items stand out from a typical item (RANK_MARGIN)
    judged: int = 0  # queries that could be judged so (those with 2 or more other items)


def tune_shard(vectors: np.ndarray, n_trees: int, seed: int, target_recall: float,
               queries: int, hint: Optional[int] = None) -> TunedShard:
    """Build, then pick the smallest search_k whose recall@10 reaches the target; when even
    the largest search_k falls short, double the trees (at most twice) and try again.

    ``hint``: a search_k to try first (the previous version's for this shard). When it
    reaches the target, the search goes down from it while the next one down does too;
    otherwise it starts from 1, as without a hint. The trees, and so the index's bytes,
    are those of a search without the hint either way. The search_k is the same too as
    long as recall does not fall as search_k grows, which is what Annoy gives (a larger
    search_k collects a superset of the candidates of a smaller one) except where distance
    ties are broken differently by Annoy and by the exact search (duplicate images): there
    a hint may settle on a larger search_k than a search from 1, which reaches the target
    too."""
    if len(vectors) < 2:  # nothing to search among: exact by definition
        return TunedShard(build_annoy(vectors, n_trees, seed), n_trees, n_trees * K, 1.0, 0)
    query_ids = query_sample(len(vectors), queries)
    exact, ranked, judged = _exact_search(vectors, query_ids)
    for doubling in range(MAX_TREE_DOUBLINGS + 1):
        trees = n_trees * 2 ** doubling
        index = build_annoy(vectors, trees, seed)
        measured = {}

        def reaches(multiplier):
            if multiplier not in measured:
                measured[multiplier] = recall(annoy_neighbours(
                    index, query_ids, trees * K * multiplier), exact)
            return measured[multiplier] >= target_recall

        hinted = hint // (trees * K) if hint and doubling == 0 else None
        first = SEARCH_K_MULTIPLIERS.index(hinted) if hinted in SEARCH_K_MULTIPLIERS else 0
        if first > 0 and not reaches(SEARCH_K_MULTIPLIERS[first]):
            first = 0  # the hint falls short: search from 1, as without one
        while first > 0 and reaches(SEARCH_K_MULTIPLIERS[first - 1]):
            first -= 1  # the one below reaches it too: go on down
        for multiplier in SEARCH_K_MULTIPLIERS[first:]:
            if reaches(multiplier):
                return TunedShard(index, trees, trees * K * multiplier, measured[multiplier],
                                  len(query_ids), ranked, judged)
        if doubling < MAX_TREE_DOUBLINGS:
            index.unload()
    return TunedShard(index, trees, trees * K * multiplier, measured[multiplier],
                      len(query_ids), ranked, judged)


def label_hits(index, labels: Sequence[Optional[str]], queries: Sequence[int],
               search_k: int) -> tuple:
    """Leave-one-out precision of a label: for each of the rows ``queries`` that has a
    label, how many of its K nearest other rows (Annoy, ``search_k``) that have a label
    carry its own. -> (queries asked, neighbours with a label, those with the query's);
    P@10 is the last over the middle one."""
    asked = [row for row in queries if labels[row]]
    judged = hits = 0
    for query, row in zip(asked, annoy_neighbours(index, asked, search_k)):
        known = [labels[other] for other in row if labels[other]]
        judged += len(known)
        hits += sum(label == labels[query] for label in known)
    return len(asked), judged, hits


def queries_per_shard(num_shards: int, total_queries: int = 1000) -> int:
    """A shard's share of the recall queries, with a margin for uneven shards."""
    return math.ceil(total_queries / num_shards) + 16
