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
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence

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


def text_columns(schema: pa.Schema) -> List[str]:
    """The caption, then every passthrough string column, in schema order."""
    passthrough = [field.name for field in schema
                   if field.name not in _NOT_TEXT and field.name not in TEXT_FIELDS
                   and pa.types.is_string(field.type)]
    return [*TEXT_FIELDS, *passthrough]


def documents(table: pa.Table) -> List[List[str]]:
    """One document per metadata row: the terms of its text columns, each column's repeated
    its field weight."""
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


def build_text_index(tables: Sequence[pa.Table], folder: str) -> List[str]:
    """Index the shards' metadata tables (in shard order) into ``folder``; returns the
    names of the files written there."""
    import bm25s

    corpus = [document for table in tables for document in documents(table)]
    os.makedirs(folder, exist_ok=True)
    if not corpus:  # an empty version has an empty text index: no files
        return []
    # bm25s numbers the terms of a corpus of strings in set order, which changes with each
    # process's string hashing: numbered here, in sorted order, the files are the same bytes
    # for the same catalog.
    vocabulary = {term: i for i, term in enumerate(sorted({t for doc in corpus for t in doc}))}
    retriever = bm25s.BM25()
    retriever.index(([[vocabulary[t] for t in doc] for doc in corpus], vocabulary),
                    show_progress=False)
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
