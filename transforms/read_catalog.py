"""ReadCatalog: a glob of image files, or a CSV / JSON Lines / Parquet catalog, as item rows.

An item row is ``{"item_id", "image_uri", "row", "passthrough": {column: str}}``, every value
as written in the catalog: CSV fields are read as strings, never type-guessed, and never
taken for a missing value ("NA", "null", "N/A", "nan" and an empty field are the strings
they are); JSON numbers keep their spelling ("1.50" stays "1.50"), and true/false/null
are JSON's; a Parquet catalog's typed values are written out (booleans as true/false). Rows whose
item_id or image_uri is missing, empty or only whitespace are dead letters (stage ``read``);
of several rows with one item_id, the first in catalog order is kept and the others are dead
letters with stage ``dedupe``, counted as duplicates.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from catalog_index import storage
from catalog_index.schema import DUPLICATE_STAGE, passthrough_name
from transforms.keys import bucket
from transforms.errors import ERRORS, counter, dead_letter, error_row

CATALOG_FORMATS = {".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".json": "json",
                   ".parquet": "parquet"}
_GLOB_CHARS = re.compile(r"[*?\[]")
CSV_BLOCK_BYTES = 16 << 20  # a CSV row (all its fields) must fit in one block


class CatalogError(ValueError):
    """The catalog source cannot be read; the message says why."""


class MissingField(ValueError):
    """A catalog row without an item_id or an image_uri."""


def is_glob(source: str) -> bool:
    return bool(_GLOB_CHARS.search(source))


def glob_root(pattern: str) -> str:
    """The folder part of a glob before its first wildcard: item ids are relative to it."""
    fixed = pattern[: _GLOB_CHARS.search(pattern).start()]
    return fixed[: fixed.rfind("/") + 1]


def item_id_for_path(path: str, root: str) -> str:
    relative = path[len(root):] if path.startswith(root) else os.path.basename(path)
    return posixpath.splitext(relative.replace(os.sep, "/"))[0]


def catalog_format(source: str) -> str:
    extension = os.path.splitext(source)[1].lower()
    if extension not in CATALOG_FORMATS:
        raise CatalogError(
            f"--catalog {source}: expected a glob of images or a .csv, .jsonl or .parquet file")
    return CATALOG_FORMATS[extension]


def _open(path: str):
    """A catalog file as a seekable binary stream: gs:// through the project's storage
    client (its retries and hedged requests), other paths through Beam's FileSystems."""
    return storage.open_read(path) if storage.is_gcs(path) else FileSystems.open(path)


def _exists(path: str) -> bool:
    return storage.exists(path) if storage.is_gcs(path) else FileSystems.exists(path)


def _open_table_batches(path: str, fmt: str):
    """Yield pyarrow RecordBatches of a catalog file, streaming where the format allows."""
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    stream = _open(path)
    if fmt == "parquet":
        yield from storage.parquet_batches(stream, 10_000)
    elif fmt == "csv":
        # Every column is read as written: "007" stays "007", never the number 7, and "NA",
        # "null" or an empty field stay strings, never a missing value (an item_id "NA" is
        # an item). A CSV has no missing value other than the empty string.
        names = _csv_header(path)
        options = pyarrow.csv.ConvertOptions(
            column_types={name: pyarrow.string() for name in names}, strings_can_be_null=False,
            quoted_strings_can_be_null=False)
        reader = pyarrow.csv.open_csv(stream, convert_options=options,
                                      read_options=pyarrow.csv.ReadOptions(
                                          block_size=CSV_BLOCK_BYTES))
        yield from reader
    else:
        raise ValueError("JSON Lines catalogs are read line by line: see catalog_rows")


class BadLine(ValueError):
    """A catalog line that is not a JSON object."""


def _json_lines(path: str):
    """(line number, row dict or BadLine) for each non-empty line of a JSON Lines file."""
    with _open(path) as raw:
        for number, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8",
                                                       errors="replace"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, parse_float=_JSONNumber.float, parse_int=_JSONNumber.int,
                                 parse_constant=_JSONNumber.float)
            except ValueError as error:
                yield number, BadLine(f"line {number}: not valid JSON ({error.msg} at "
                                      f"column {error.colno})")
                continue
            yield number, row if isinstance(row, dict) else BadLine(
                f"line {number}: a JSON {type(row).__name__}, not an object")


def catalog_rows(path: str, fmt: str):
    """(row number, row dict or BadLine) in file order: data rows from 1 for CSV and
    Parquet, line numbers for JSON Lines."""
    if fmt == "json":
        yield from _json_lines(path)
        return
    number = 0
    batches = _open_table_batches(path, fmt)
    while True:
        try:
            batch = next(batches, None)
        except Exception as error:  # pyarrow: a broken row or a field beyond the block size
            raise CatalogError(f"--catalog {path}: unreadable after row {number} "
                               f"({_first_line(error)})") from None
        if batch is None:
            return
        for row in batch.to_pylist():
            number += 1
            yield number, row


def _first_line(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "straddling" in text:
        return f"a row longer than the reader's {CSV_BLOCK_BYTES // 2**20} MiB block"
    return text[:200]


def _csv_header(path: str) -> list:
    import pyarrow.csv

    with _open(path) as stream:
        return pyarrow.csv.open_csv(stream, read_options=pyarrow.csv.ReadOptions(
            block_size=1 << 16)).schema.names


def _catalog_header(source: str, fmt: str):
    """-> (column names, whether the catalog has at least one row)."""
    import pyarrow.parquet

    if fmt == "parquet":
        with _open(source) as stream:
            metadata = pyarrow.parquet.ParquetFile(stream).metadata
            return metadata.schema.to_arrow_schema().names, metadata.num_rows > 0
    if fmt == "json":  # every key of every object, in the order they first appear
        names = {}
        for _, row in _json_lines(source):
            if isinstance(row, dict):
                names.update(dict.fromkeys(row))
        return list(names), bool(names)
    first = next((batch for batch in _open_table_batches(source, fmt) if batch.num_rows), None)
    return _csv_header(source), first is not None


def check_glob_matches(pattern: str) -> None:
    """A glob that matches no file is a usage error, found before any work starts."""
    try:
        matched = FileSystems.match([pattern], limits=[1])[0].metadata_list
    except Exception as error:
        raise CatalogError(f"--catalog {pattern}: cannot list it ({error})") from None
    if not matched:
        raise CatalogError(f"--catalog {pattern}: no file matches this pattern")


def catalog_columns(source: str) -> list:
    """The passthrough columns of a catalog (empty for a glob), read from its header."""
    if is_glob(source):
        check_glob_matches(source)
        return []
    fmt = catalog_format(source)
    try:
        if not _exists(source):
            raise CatalogError(f"--catalog {source}: file not found")
        names, has_rows = _catalog_header(source, fmt)
    except CatalogError:
        raise
    except Exception as error:
        raise CatalogError(f"--catalog {source}: cannot read it ({_first_line(error)})") from None
    passthrough = check_header(source, names)
    if not has_rows:
        raise CatalogError(f"--catalog {source}: the catalog has no rows")
    return sorted(passthrough)


def check_header(source: str, names) -> list:
    """Every column named, once; item_id and image_uri present; renamed reserved columns
    clashing with no other column. Returns the passthrough columns, as named in metadata."""
    unnamed = [str(number) for number, name in enumerate(names, 1) if not str(name).strip()]
    if unnamed:
        raise CatalogError(f"--catalog {source}: column(s) {', '.join(unnamed)} have no name")
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise CatalogError(f"--catalog {source}: duplicate column(s) {', '.join(duplicated)}")
    missing = {"item_id", "image_uri"} - set(names)
    if missing:
        raise CatalogError(f"--catalog {source}: missing column(s) {', '.join(sorted(missing))}")
    passthrough = [passthrough_name(name) for name in names if name not in ("item_id", "image_uri")]
    clashes = sorted({name for name in passthrough if passthrough.count(name) > 1})
    if clashes:
        raise CatalogError(f"--catalog {source}: column(s) {', '.join(clashes)} would hold "
                           "two columns once reserved names are prefixed; rename one")
    return passthrough


class _JSONNumber:
    """A JSON Lines number that remembers how it was written: its text is the catalog's
    value ("1.50", "1e3"), not Python's rendering of it (1.5, 1000.0)."""

    class float(float):  # noqa: A001 (a float, with the literal beside it)
        def __new__(cls, literal: str):
            number = super().__new__(cls, literal)
            number.literal = literal
            return number

    class int(int):  # noqa: A001
        def __new__(cls, literal: str):
            number = super().__new__(cls, literal)
            number.literal = literal
            return number


def _as_text(value):
    """A catalog value as the metadata's string: as written where the catalog has text (CSV,
    a JSON string or number), else its JSON spelling (true, false, objects and lists)."""
    if value is None or isinstance(value, str):
        return value
    if hasattr(value, "literal"):
        return value.literal
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (dict, list)) \
        else str(value)


def _resolve_uri(uri: str, catalog_path: str) -> str:
    """Relative image URIs are relative to the catalog file's folder."""
    if "://" in uri or os.path.isabs(uri):
        return uri
    return FileSystems.join(posixpath.dirname(catalog_path) if "://" in catalog_path
                            else os.path.dirname(os.path.abspath(catalog_path)), uri)


class ReadCatalogFile(beam.DoFn):
    """Catalog rows in file order; ``row`` is the data row's number, from 1."""

    def __init__(self, columns):
        self.columns = list(columns)  # the catalog's passthrough columns, from its header

    def process(self, path):
        for number, row in catalog_rows(path, catalog_format(path)):
            counter("read").inc()
            if isinstance(row, BadLine):
                yield dead_letter({"row": number}, "read", row)
                continue
            item_id, uri = _as_text(row.pop("item_id", None)), row.pop("image_uri", None)
            passthrough = {passthrough_name(key): _as_text(value) for key, value in row.items()}
            item = {"item_id": item_id, "image_uri": uri, "row": number,
                    "passthrough": {name: passthrough.get(name) for name in self.columns}}
            missing = [name for name, value in (("item_id", item_id), ("image_uri", uri))
                       if not value or not str(value).strip()]
            if missing:
                yield dead_letter(item, "read", MissingField(
                    f"row {number}: {' and '.join(missing)} empty or only whitespace"))
                continue
            item["image_uri"] = _resolve_uri(str(uri), path)
            yield item


class _KeepFirstPerItemId(beam.DoFn):
    """Of the rows with one item_id (in one bucket of item ids), the first in catalog order
    is kept (for a glob, which has no order of its own, the first by path)."""

    def process(self, keyed):
        _bucket, rows = keyed
        by_item_id = {}
        for row in rows:
            by_item_id.setdefault(row["item_id"], []).append(row)
        for same_id in by_item_id.values():
            ordered = sorted(same_id, key=lambda row: (row.get("row") or 0, row["image_uri"]))
            yield ordered[0]
            for duplicate in ordered[1:]:
                counter("duplicate").inc()
                yield beam.pvalue.TaggedOutput(ERRORS, error_row(
                    duplicate, DUPLICATE_STAGE, "DuplicateItemId",
                    f"item_id already present; kept image_uri {ordered[0]['image_uri']}"))


class ReadCatalog(beam.PTransform):
    """source -> {"items", "errors", "input_count"}. Items are deduplicated by item_id;
    ``input_count`` is a one-element PCollection: every row read, good or bad."""

    def __init__(self, source: str, columns=None):
        super().__init__()
        self.source = source
        # The passthrough columns (catalog_columns), when the caller has read them already.
        self.columns = columns if columns is not None or is_glob(source) else \
            catalog_columns(source)

    def expand(self, pbegin):
        if is_glob(self.source):
            root = glob_root(self.source)
            rows = (pbegin
                    | "MatchImages" >> fileio.MatchFiles(self.source)
                    | "ToItems" >> beam.Map(lambda meta: {
                        "item_id": item_id_for_path(meta.path, root), "image_uri": meta.path,
                        "passthrough": {}})
                    | "CountRead" >> beam.Map(_count_read))
            read_errors = pbegin | "NoReadErrors" >> beam.Create([])
        else:
            read = (pbegin
                    | "CatalogPath" >> beam.Create([self.source])
                    | "ReadRows" >> beam.ParDo(ReadCatalogFile(self.columns))
                    .with_outputs(ERRORS, main="rows"))
            rows, read_errors = read.rows, read[ERRORS]
        deduped = (rows
                   | "ByItemIdBucket" >> beam.GroupBy(lambda item: bucket(item["item_id"]))
                   | "KeepFirst" >> beam.ParDo(_KeepFirstPerItemId()).with_outputs(
                       ERRORS, main="items"))
        errors = (read_errors, deduped[ERRORS]) | "ReadErrors" >> beam.Flatten()
        input_count = ((rows, read_errors) | "AllRows" >> beam.Flatten()
                       | "CountInput" >> beam.combiners.Count.Globally())
        return {"items": deduped.items, "errors": errors, "input_count": input_count}


def _count_read(item):
    counter("read").inc()
    return item
