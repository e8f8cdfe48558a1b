"""The text index built a few thousand documents at a time (issue 28): the same files, byte
for byte, as bm25s indexing every document in memory, and the same answers; the Beam step
reads one shard's metadata at a time."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.text_build import catalog, reference_build
from catalog_index.analyzer import analyze
from catalog_index.text_index import ROWS_PER_BATCH, TextIndex, build_text_index, documents

QUERIES = ("dress", "black ankle boots", "платье", "连衣裙", "ワンピース", "فستان", "เสื้อยืด",
           "gray t-shirt/top", "sandal sandal", "no such word")


def _edge_rows() -> pa.Table:
    """A shard of the rows that are easy to get wrong: no text at all, stop words only, a
    learned caption with no confidence, the same term in every column, a long title."""
    return pa.table({
        "item_id": [f"edge-{n}" for n in range(7)],
        "caption": [None, "the of", "red dress", "dress", "", "bag", "coat " * 200],
        "caption_source": ["catalog", "learned", "learned", "learned", None, "labels",
                           "catalog"],
        "caption_confidence": pa.array([None, 0.9, None, 1.0, None, None, None],
                                       pa.float32()),
        "title": [None, "and", "Dress", "dress DRESS dresses", "", "Платье", "Coat"],
        "category": [None, None, "Dress", "dress", "", None, "Coat"],
    })


def _shards():
    """Four shards of the benchmark's synthetic catalog (every script's titles, learned
    captions), the last one short, then the edge rows, then an empty shard."""
    tables = list(catalog(3 * 5_000 + 1_234, shard_items=5_000, seed=28))
    return [*tables, _edge_rows(), tables[0].slice(0, 0)]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same shards indexed by the in-memory reference and by build_text_index."""
    tables = _shards()
    assert sum(table.num_rows for table in tables) > 3 * ROWS_PER_BATCH
    old, new = (str(tmp_path_factory.mktemp(name)) for name in ("old", "new"))
    assert reference_build(tables, old) == build_text_index(iter(tables), new)
    return tables, old, new


def test_the_files_are_bm25s_s_files_byte_for_byte(both):
    _, old, new = both
    names = sorted(os.listdir(old))
    assert names == ["data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy",
                     "params.index.json", "vocab.index.json"]
    assert sorted(os.listdir(new)) == names
    for name in names:
        with open(os.path.join(old, name), "rb") as a, open(os.path.join(new, name), "rb") as b:
            assert a.read() == b.read(), name


def test_queries_answer_as_bm25s_on_the_documents(both):
    """Against the saved reference, and against bm25s indexing the documents' strings
    itself (its own vocabulary, in set order): the same documents, the same scores."""
    import bm25s

    tables, old, new = both
    shard_items = [table.num_rows for table in tables]
    ours, reference = TextIndex(new, shard_items), TextIndex(old, shard_items)
    direct = bm25s.BM25()
    direct.index([document for table in tables for document in documents(table)],
                 show_progress=False)
    for query in QUERIES:
        assert ours.search(query, 50) == reference.search(query, 50), query
        terms = dict.fromkeys(analyze(query), 1.0)
        coverage = ours.coverage(terms)
        np.testing.assert_array_equal(coverage, reference.coverage(terms))
        assert ours.best_covered(coverage, list(terms), 20) == \
            reference.best_covered(coverage, list(terms), 20)
        known = [term for term in terms if term in ours.retriever.vocab_dict]
        if known:
            np.testing.assert_array_equal(ours.retriever.get_scores(known),
                                          direct.get_scores(known))
    assert ours.search("dress", 5) and ours.search("платье", 5)


def test_a_catalog_without_a_single_term_has_an_index_that_finds_nothing(tmp_path):
    """bm25s refuses an empty vocabulary (the in-memory build failed on it): the index
    has only bm25s's empty term, and opens."""
    table = pa.table({"caption": ["the", None, ""], "title": [None, "of and", "..."]})
    assert build_text_index([table], str(tmp_path)) == [
        "data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy",
        "params.index.json", "vocab.index.json"]
    index = TextIndex(str(tmp_path), [3])
    assert index.retriever.vocab_dict == {"": 0}
    assert index.search("dress", 3) == []
    assert index.best_covered(index.coverage({"dress": 1.0}), ["dress"], 3) == []


def test_no_documents_no_files(tmp_path):
    assert build_text_index([], str(tmp_path / "text")) == []
    assert os.listdir(tmp_path / "text") == []


def test_the_beam_step_reads_one_shard_at_a_time(both, tmp_path, monkeypatch):
    """Each shard's metadata file (with the columns a metadata file has besides its text)
    is downloaded when the build reaches it, and removed before the next one comes."""
    from catalog_index import storage
    from transforms import text_index as step

    tables, _, new = both
    version = tmp_path / "version"
    (version / "metadata").mkdir(parents=True)
    summaries = []
    for shard, table in enumerate(tables):
        table = table.append_column("annoy_id", pa.array(range(table.num_rows), pa.int64())) \
            .append_column("width", pa.array([800] * table.num_rows, pa.int32()))
        name = f"metadata/part-{shard:05d}.parquet"
        pq.write_table(table, str(version / name), row_group_size=3_000)
        summaries.append({"shard": shard, "metadata_file": name, "items": table.num_rows})
    on_disk = []
    download = storage.download_file

    def counting_download(source, local):
        on_disk.append(sorted(name for name in os.listdir(os.path.dirname(local))
                              if name.endswith(".parquet")))
        return download(source, local)

    monkeypatch.setattr(storage, "download_file", counting_download)
    [result] = step._BuildTextIndex(str(version)).process(None, summaries[::-1])
    assert on_disk == [[]] * len(tables)
    assert result["documents"] == sum(table.num_rows for table in tables)
    assert [entry["file"] for entry in result["files"]] == \
        [f"text/{name}" for name in sorted(os.listdir(new))]
    for name in os.listdir(new):
        with open(os.path.join(new, name), "rb") as a, open(version / "text" / name, "rb") as b:
            assert a.read() == b.read(), name
