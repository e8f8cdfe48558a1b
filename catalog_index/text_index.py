"""The text index of a version: BM25 over each item's caption and the catalog's text columns,
built once at build time and stored in ``text/`` (checksummed in the manifest), so that
opening a version never re-tokenizes the catalog. Beam-free: the build and the reader share
it.

Document ids run over the shards in order: shard s's item with Annoy id a is document
``offsets[s] + a``, where ``offsets`` are the running sums of the shards' item counts.
"""

from __future__ import annotations

import os
from typing import List, Sequence

import numpy as np
import pyarrow as pa

from catalog_index.schema import METADATA_FIELDS

TEXT_DIR = "text"
# Metadata columns a text query searches, besides the catalog's passthrough columns.
TEXT_FIELDS = ("caption",)
_NOT_TEXT = {field.name for field in METADATA_FIELDS} - set(TEXT_FIELDS)


def text_columns(schema: pa.Schema) -> List[str]:
    """The caption, then every passthrough string column, in schema order."""
    passthrough = [field.name for field in schema
                   if field.name not in _NOT_TEXT and field.name not in TEXT_FIELDS
                   and pa.types.is_string(field.type)]
    return [*TEXT_FIELDS, *passthrough]


def documents(table: pa.Table) -> List[str]:
    """One document per metadata row: its text columns joined by spaces."""
    columns = [table.column(name).to_pylist() for name in text_columns(table.schema)]
    return [" ".join(value or "" for value in values) for values in zip(*columns)]


def build_text_index(tables: Sequence[pa.Table], folder: str) -> List[str]:
    """Index the shards' metadata tables (in shard order) into ``folder``; returns the
    names of the files written there."""
    import bm25s

    corpus = [document for table in tables for document in documents(table)]
    os.makedirs(folder, exist_ok=True)
    if not corpus:  # an empty version has an empty text index: no files
        return []
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False),
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

    def search(self, text: str, k: int):
        """-> [(shard, annoy_id, score)], best first, only documents that match."""
        import bm25s

        query = bm25s.tokenize([text], stopwords="en", show_progress=False)
        if not self.size or not query.vocab:
            return []
        ids, scores = self.retriever.retrieve(query, k=min(k, self.size), show_progress=False)
        found = []
        for document, score in zip(ids[0], scores[0]):
            if score > 0:
                shard = int(np.searchsorted(self.offsets, document, side="right") - 1)
                found.append((shard, int(document - self.offsets[shard]), float(score)))
        return found
