"""Text queries in every script: P@10 of product-word queries over a multilingual catalog,
with the analyzer before issue 27 (folded to ASCII) and the one that replaced it.

    .venv/bin/python -m benchmarks.text_multilingual [--ablations]

The catalog (benchmarks/multilingual_titles.py, hand-written): 30 titles for each of
Fashion-MNIST's 10 classes in each of 11 languages, 3,300 items in one text index, built
and searched by the production path (``build_text_index``, ``TextIndex.search``) with the
analyzer under test. The queries: each class's common word(s) in each language, in
another form than the titles where the language has one. P@10: the share of a query's
first 10 results (missing results count as wrong) that have the query's class, averaged
over a language's queries.

``--ablations`` adds the analyzer's choices measured against their alternatives:
"pairs only" cuts unspaced scripts into pairs of characters and single characters only
where a run has one (as Lucene's CJKAnalyzer); "Snowball Arabic" stems Arabic with
Snowball's stemmer instead of the light one; "Thai words" segments Thai with PyThaiNLP's
dictionary (newmm) instead of pairs, when PyThaiNLP is installed (it is not a dependency);
"Latin as German" and "Latin as French" stem every Latin-script word with that language's
Snowball stemmer instead of English's (what a catalog-language option would do).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import random
import re
import tempfile
import time
import unicodedata
from typing import Callable, Dict, List
from unittest import mock

import numpy as np
import pyarrow as pa

from benchmarks.multilingual_titles import LANGUAGES, queries, titles
from catalog_index import analyzer, text_index

K = 10


# --- the analyzer before issue 27, kept as the baseline ------------------------------------
_OLD_JOINED = re.compile(r"(?<=[a-z0-9])['\u2019-](?=[a-z0-9])")
_OLD_TOKEN = re.compile(r"[a-z0-9]+")


@functools.lru_cache(maxsize=1)
def _old_stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


@functools.lru_cache(maxsize=1)
def _old_stopwords() -> frozenset:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def old_analyze(text: str) -> List[str]:
    """Unicode folded to ASCII (everything else deleted), lower case, joined across
    hyphens and apostrophes, English stop words dropped, English Snowball stems."""
    folded = unicodedata.normalize("NFKD", text or "").encode("ascii", "ignore").decode()
    words = _OLD_TOKEN.findall(_OLD_JOINED.sub("", folded.lower()))
    return _old_stemmer().stemWords([word for word in words if word not in _old_stopwords()])


# --- the alternatives to the analyzer's choices ---------------------------------------------
_unspaced_terms, _stemmer = analyzer.unspaced_terms, analyzer._stemmer  # unpatched


def _pairs_only(run: str) -> List[str]:
    characters = analyzer._characters(run)
    if len(characters) == 1:
        return characters
    return [a + b for a, b in zip(characters, characters[1:])]


def _snowball_arabic(script: str):
    import Stemmer

    if script == "arabic":
        return Stemmer.Stemmer("arabic").stemWord
    return _stemmer(script)


def _latin_as(language: str):
    def stemmer(script: str):
        import Stemmer

        return Stemmer.Stemmer(language).stemWord if script == "latin" else _stemmer(script)
    return stemmer


def _thai_words(run: str) -> List[str]:
    from pythainlp.tokenize import word_tokenize

    if analyzer._script(run[0]) != "thai":
        return _unspaced_terms(run)
    return [word for word in word_tokenize(run, engine="newmm") if word.strip()]


def _patched(name: str, value):
    return functools.partial(mock.patch.object, analyzer, name, value)


ANALYZERS: Dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "old": lambda: mock.patch.object(text_index, "analyze", old_analyze),
    "new": contextlib.nullcontext,
}
ABLATIONS = {
    "pairs only": _patched("unspaced_terms", _pairs_only),
    "Snowball Arabic": _patched("_stemmer", _snowball_arabic),
    "Thai words": _patched("unspaced_terms", _thai_words),
    "Latin as German": _patched("_stemmer", _latin_as("german")),
    "Latin as French": _patched("_stemmer", _latin_as("french")),
}


def catalog() -> pa.Table:
    """Every language's titles, shuffled (a fixed order), as a metadata-like table."""
    rows = [(title, name, language) for language in LANGUAGES
            for title, name in titles(language)]
    random.Random(0).shuffle(rows)
    return pa.table({"item_id": [f"item-{n:05d}" for n in range(len(rows))],
                     "caption": [None] * len(rows),
                     "title": [title for title, _, _ in rows],
                     "class": [name for _, name, _ in rows],
                     "language": [language for _, _, language in rows]})


def precision(table: pa.Table) -> Dict[str, float]:
    """{language: mean P@10 of its queries}, with the analyzer in force."""
    classes = table.column("class").to_pylist()
    with tempfile.TemporaryDirectory() as folder:
        text_index.build_text_index([table.select(["item_id", "caption", "title"])], folder)
        index = text_index.TextIndex(folder, [table.num_rows])
        found = {}
        for language in LANGUAGES:
            found[language] = float(np.mean([
                sum(classes[document] == name for _, document, _ in index.search(query, K)) / K
                for query, name in queries(language)]))
    return found


def analysis_time(table: pa.Table, analyze) -> float:
    """Microseconds per title, the best of three passes."""
    values = table.column("title").to_pylist()
    passes = []
    for _ in range(3):
        started = time.perf_counter()
        for value in values:
            analyze(value)
        passes.append(time.perf_counter() - started)
    return min(passes) / len(values) * 1e6


def markdown(rows: List[List[str]]) -> str:
    """A Markdown table, the first row its header, numbers right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                               for i, (cell, width) in enumerate(zip(row, widths))) + " |"
             for row in rows]
    rule = "|" + "|".join("-" * (w + 1) + ("-" if i == 0 else ":")
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([lines[0], rule, *lines[1:]])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ablations", action="store_true",
                        help="also measure the alternatives to the analyzer's choices")
    args = parser.parse_args(argv)

    table = catalog()
    columns = dict(ANALYZERS)
    if args.ablations:
        columns.update(ABLATIONS)
        try:
            import pythainlp  # noqa: F401
        except ImportError:
            del columns["Thai words"]
    print(f"{table.num_rows:,} titles in {len(LANGUAGES)} languages, "
          f"{sum(len(queries(language)) for language in LANGUAGES)} queries; P@{K}:\n")
    results = {}
    for column, patch in columns.items():
        with patch():
            results[column] = precision(table)
    rows = [["language", *columns]]
    rows += [[language, *(f"{results[c][language]:.2f}" for c in columns)]
             for language in LANGUAGES]
    rows.append(["**mean**", *(f"**{np.mean(list(results[c].values())):.3f}**"
                               for c in columns)])
    print(markdown(rows))
    print(f"\nanalysis time per title: old {analysis_time(table, old_analyze):.1f} us, "
          f"new {analysis_time(table, analyzer.analyze):.1f} us")


if __name__ == "__main__":
    main()
