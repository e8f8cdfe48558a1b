"""The text index of a version: BM25 over each item's caption and the catalog's text columns,
built once at build time and stored in ``text/`` (checksummed in the manifest), so that
opening a version never re-tokenizes the catalog. Beam-free: the build and the reader share
it.

Analyzer (:func:`catalog_index.analyzer.analyze`, the same for documents and queries, in
every script): NFKC-normalized and casefolded, letters joined across hyphens and apostrophes
("T-shirt" -> "tshirt", so "t-shirts" finds "T-shirt/top" and not "Shirt"), split into
words of any script, accents stripped where the script allows ("Café" -> "cafe"; not
"й"), stemmed by the Snowball stemmer of the word's script ("trousers" -> "trouser",
"платья" -> "плат"; English stop words dropped), and scripts written without spaces cut
into characters and pairs of characters ("连衣裙" -> "连", "衣", "裙", "连衣", "衣裙").

Fields: BM25 has one field, so fields are weighted the usual BM25F way, by repeating a
field's terms: ``title`` counts 3 times, ``category`` twice, the caption and other text
columns once (:data:`FIELD_WEIGHTS`). BM25's term saturation keeps a repeated field from
dominating: a title match outranks a caption match, several caption matches can still win.
A caption learned from the image (``caption_source`` "learned") counts ``1 + int(4 *
caption_confidence)`` times, so that among untitled items the surer captions rank first.

Document ids run over the shards in order: shard s's item with Annoy id a is document
``offsets[s] + a``, where ``offsets`` are the running sums of the shards' item counts.

The build reads the shards' metadata a few thousand rows at a time and counts each
document's terms into arrays (:class:`_Postings`), then computes what ``bm25s.BM25().index``
computes for the same documents (its defaults: the "lucene" method, k1 1.5, b 0.75) and
saves it with bm25s's own ``save``: the same files, byte for byte, as bm25s indexing every
document in memory, in memory that follows the index (8 bytes a (document, term) pair
while counting, about 20 at the end, plus the vocabulary), not the catalog's Python
objects. A catalog whose documents have no terms at all gets an index of bm25s's empty
term alone, which finds nothing (bm25s itself refuses an empty vocabulary).
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Dict, Iterable, List, Sequence

import numpy as np
import pyarrow as pa

from catalog_index.analyzer import analyze
from catalog_index.schema import METADATA_FIELDS

TEXT_DIR = "text"
# Metadata columns a text query searches, besides the catalog's passthrough columns.
TEXT_FIELDS = ("caption",)
_NOT_TEXT = {field.name for field in METADATA_FIELDS} - set(TEXT_FIELDS)


# How many times a field's terms count; columns not named here count once.
FIELD_WEIGHTS = {"title": 3, "category": 2}
# Rows analyzed and counted at a time.
ROWS_PER_BATCH = 4096


def text_columns(schema: pa.Schema) -> List[str]:
    """The caption, then every passthrough string column, in schema order."""
    passthrough = [field.name for field in schema
                   if field.name not in _NOT_TEXT and field.name not in TEXT_FIELDS
                   and pa.types.is_string(field.type)]
    return [*TEXT_FIELDS, *passthrough]


def documents(table: pa.Table) -> List[List[str]]:
    """One document per metadata row (of a table or a record batch): the terms of its text
    columns, each column's repeated its field weight."""
    names = text_columns(table.schema)
    weights = [FIELD_WEIGHTS.get(name, 1) for name in names]
    columns = [table.column(name).to_pylist() for name in names]
    caption_weights = [1] * table.num_rows
    if "caption_source" in table.schema.names:
        caption_weights = [1 + int(4 * (confidence or 0.0)) if source == "learned" else 1
                           for source, confidence in zip(
                               table.column("caption_source").to_pylist(),
                               table.column("caption_confidence").to_pylist())]
    return [[term for name, value, weight in zip(names, values, weights)
             for term in analyze(value) * (weight * caption if name == "caption" else weight)]
            for values, caption in zip(zip(*columns), caption_weights)]


class _Postings:
    """The documents' terms, counted a few thousand documents at a time into compact
    arrays: for each document (in order) its length and its number of distinct terms, and
    for each of those (document, term) pairs the term's id (numbered as first seen) and its
    count. About 8 bytes a pair and 12 a document, plus the vocabulary: the catalog's terms
    are never all Python objects at once."""

    def __init__(self):
        self.vocabulary: Dict[str, int] = {}
        self.documents = 0
        self._terms: List[np.ndarray] = []  # per chunk of documents
        self._counts: List[np.ndarray] = []
        self._distinct: List[np.ndarray] = []
        self._lengths: List[np.ndarray] = []

    def add(self, table) -> None:
        """Count the terms of a metadata table's (or record batch's) rows."""
        batch = documents(table)
        terms = list(itertools.chain.from_iterable(batch))
        vocabulary = self.vocabulary
        new = set(terms).difference(vocabulary)
        vocabulary.update(zip(new, range(len(vocabulary), len(vocabulary) + len(new))))
        term_ids = np.fromiter(map(vocabulary.__getitem__, terms), np.int64, len(terms))
        lengths = np.array([len(document) for document in batch], np.int64)
        document_ids = np.repeat(np.arange(len(batch), dtype=np.int64), lengths)
        # (document, term) pairs as one sortable number: distinct, in document order
        pairs, counts = np.unique(document_ids << 32 | term_ids, return_counts=True)
        self._terms.append((pairs & 0xFFFFFFFF).astype(np.int32))
        self._counts.append(counts.astype(np.int32))
        self._distinct.append(np.bincount(pairs >> 32, minlength=len(batch)).astype(np.int32))
        self._lengths.append(lengths)
        self.documents += len(batch)

    def index(self, k1: float, b: float):
        """-> (scores, vocabulary) as ``bm25s.BM25.index`` makes them from the same documents
        with the "lucene" method, the vocabulary numbered in sorted order: each document's
        BM25 score for each of its terms, a matrix (documents x terms) in CSC layout (each
        term's documents in order). Empties what was counted."""
        ordered = sorted(self.vocabulary)
        renumber = np.empty(len(ordered), np.int32)
        renumber[[self.vocabulary[term] for term in ordered]] = np.arange(len(ordered))
        vocabulary = {term: i for i, term in enumerate(ordered)}
        self.vocabulary = {}
        terms = renumber[np.concatenate(self._terms)]
        self._terms = []
        frequencies = np.bincount(terms, minlength=len(ordered))  # documents with the term
        idf = _lucene_idf(frequencies, self.documents)
        # bm25s: per document k1 * (1 - b + b * length / average length) in its scalar
        # arithmetic, float64 under NumPy 2 (NumPy 1 cast it to the counts' float32); the
        # average is of integers, exact in any order of summation.
        average = np.concatenate(self._lengths).mean()
        scalar = np.result_type(np.float64(0), np.float32)
        scores, start = [], 0
        for counts, distinct, lengths in zip(self._counts, self._distinct, self._lengths):
            with np.errstate(divide="ignore", invalid="ignore"):  # every document empty
                saturation = (k1 * ((1 - b) + b * lengths / average)).astype(scalar)
            counts = counts.astype(np.float32)
            term_frequency = counts / (np.repeat(saturation, distinct) + counts)
            chunk_idf = idf[terms[start:start + len(counts)]]
            scores.append((chunk_idf * term_frequency).astype(np.float32))
            start += len(counts)
        self._counts, self._lengths = [], []
        scores = np.concatenate(scores)
        documents = np.repeat(np.arange(self.documents, dtype=np.int32),
                              np.concatenate(self._distinct))
        self._distinct = []
        # The pairs came in document order: a stable sort by term keeps each term's in order.
        by_term = np.argsort(terms, kind="stable")
        del terms
        data = scores[by_term]
        del scores
        indices = documents[by_term]
        del documents, by_term
        indptr = np.zeros(len(ordered) + 1, np.int64)
        np.cumsum(frequencies, out=indptr[1:])
        return {"data": data, "indices": indices, "indptr": indptr,
                "num_docs": self.documents}, vocabulary


def _lucene_idf(frequencies: np.ndarray, documents: int) -> np.ndarray:
    """bm25s's "lucene" idf of each term, from the number of documents that hold it:
    computed by Python's math.log (as bm25s does) once per distinct number, stored as
    float32."""
    distinct, which = np.unique(frequencies, return_inverse=True)
    idf = np.array([math.log(1 + (documents - int(found) + 0.5) / (int(found) + 0.5))
                    for found in distinct], np.float32)
    return idf[which]


def build_text_index(tables: Iterable, folder: str) -> List[str]:
    """Index the shards' metadata tables or record batches (in shard order; an iterator is
    read once, a few thousand rows at a time) into ``folder``; returns the names of the
    files written there. The files are those ``bm25s.BM25().index`` and ``save`` write for
    the same documents (:func:`documents`), byte for byte; memory grows with the index
    itself, not with the catalog's Python objects."""
    import bm25s

    postings = _Postings()
    for table in tables:
        for start in range(0, table.num_rows, ROWS_PER_BATCH):
            postings.add(table.slice(start, ROWS_PER_BATCH))
    os.makedirs(folder, exist_ok=True)
    if not postings.documents:  # an empty version has an empty text index: no files
        return []
    retriever = bm25s.BM25()
    if (retriever.method, retriever.idf_method) != ("lucene", "lucene"):
        raise RuntimeError(f"bm25s {bm25s.__version__} scores by {retriever.method!r}; "
                           "this index computes 'lucene'")
    # bm25s would number the terms in set order, which changes with each process's string
    # hashing: numbered in sorted order, the files are the same bytes for the same catalog.
    retriever.scores, retriever.vocab_dict = postings.index(retriever.k1, retriever.b)
    if "" not in retriever.vocab_dict:  # bm25s's empty term, last (alone: no terms at all)
        retriever.vocab_dict[""] = len(retriever.vocab_dict)
    retriever.nonoccurrence_array = None
    retriever.save(folder, show_progress=False)
    return sorted(os.listdir(folder))


class TextIndex:
    """A saved text index, memory-mapped."""

    def __init__(self, folder: str, shard_items: Sequence[int]):
        import bm25s

        self.offsets = np.concatenate([[0], np.cumsum(shard_items)]).astype(np.int64)
        self.retriever = bm25s.BM25.load(folder, mmap=True, show_progress=False) \
            if self.size else None

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    def document(self, shard: int, annoy_id: int) -> int:
        return int(self.offsets[shard] + annoy_id)

    def coverage(self, terms: Dict[str, float]) -> np.ndarray:
        """For every document, the share of the (analyzed) ``terms`` it contains, each term
        weighted by its BM25 idf times its weight in ``terms``: 1.0 when it has them all,
        0.0 when none. Unlike a BM25 score it does not favour short documents, so it can
        be added to a cosine similarity."""
        covered, total = np.zeros(self.size, np.float32), 0.0
        for term, weight in sorted(terms.items()):
            if not self.size or term not in self.retriever.vocab_dict:
                total += weight * np.log(1 + (self.size + 0.5) / 0.5)  # no document has it
                continue
            matched = np.asarray(self.retriever.get_scores([term])) > 0
            found = int(matched.sum())
            idf = weight * float(np.log(1 + (self.size - found + 0.5) / (found + 0.5)))
            covered += idf * matched
            total += idf
        return covered / total if total else covered

    def best_covered(self, coverage: np.ndarray, terms: Sequence[str], k: int):
        """-> [(shard, annoy_id)] of the (at most) k documents with the highest coverage,
        ties broken by BM25 score, then document order."""
        matching = np.flatnonzero(coverage > 0)
        if len(matching) > k:
            terms = [term for term in terms if term in self.retriever.vocab_dict]
            bm25 = np.asarray(self.retriever.get_scores(terms))[matching]
            order = np.lexsort((matching, -bm25, -coverage[matching]))
            matching = matching[order[:k]]
        shards = np.searchsorted(self.offsets, matching, side="right") - 1
        return [(int(s), int(d - self.offsets[s])) for s, d in zip(shards, matching)]

    def search(self, text: str, k: int):
        """-> [(shard, annoy_id, score)], best first, only documents that match."""
        if not self.size:
            return []
        terms = [term for term in analyze(text) if term in self.retriever.vocab_dict]
        if not terms:
            return []
        ids, scores = self.retriever.retrieve([terms], k=min(k, self.size), show_progress=False)
        found = []
        for document, score in zip(ids[0], scores[0]):
            if score > 0:
                shard = int(np.searchsorted(self.offsets, document, side="right") - 1)
                found.append((shard, int(document - self.offsets[shard]), float(score)))
        return found
