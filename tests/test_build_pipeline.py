"""The nightly build end to end on real photos, plus the stages alone with TestPipeline."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import tempfile

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from annoy import AnnoyIndex
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from catalog_index.schema import index_file, shard_of, version_dir
from pipelines.build_index import run
from tests.real_images import decode_edge_cases, encode, write_files
from transforms.read_catalog import ReadCatalog, glob_root, item_id_for_path
from transforms.shard import GroupIntoShards
from transforms.write_metadata import write_embeddings_parquet

BAD_STAGE = {"truncated": "decode", "empty": "decode", "text": "decode", "huge": "decode"}
GOOD_EDGE_FILES = ("cmyk.jpg", "sixteen_bit.png", "palette_transparent.png", "animated.gif",
                   "exif_rotated.jpg", "alpha.png", "photo.webp")
MULTIPROCESS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
# These catalogs are mostly bad on purpose; the quality gate has its own tests.
TOLERATE_FAILURES = ["--max-failure-rate", "1"]


def read_parquet_dir(folder):
    tables = [pq.read_table(os.path.join(folder, name)) for name in sorted(os.listdir(folder))]
    return [row for table in tables for row in table.to_pylist()]


def file_digests(folder):
    return {name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def image_catalog(tmp_path_factory, photos):
    """Real photos as JPEG plus one file of every awkward kind, good and bad."""
    root = tmp_path_factory.mktemp("catalog")
    good = {f"photos/{name}.jpg": encode(photo) for name, photo in photos.items()}
    edge = decode_edge_cases(photos)
    files = {**good, **{f"odd/{name}": data for name, (data, _) in edge.items()}}
    write_files(str(root / "images"), files)
    good_ids = {f"photos/{name}" for name in photos} | {
        f"odd/{os.path.splitext(name)[0]}" for name in GOOD_EDGE_FILES}
    bad_ids = {f"odd/{name}": stage for name, stage in BAD_STAGE.items()}
    return str(root / "images"), good_ids, bad_ids


@pytest.fixture(scope="module")
def two_builds(image_catalog, tmp_path_factory, model_cache):
    images, _, _ = image_catalog
    output = str(tmp_path_factory.mktemp("index"))
    codes = [run(["--catalog", f"{images}/**", "--output", output, "--num-shards", "3",
                  "--version-id", version, *MULTIPROCESS, *TOLERATE_FAILURES]) for version in ("first", "second")]
    return output, codes


def test_build_publishes_and_counts_add_up(two_builds, image_catalog):
    output, codes = two_builds
    _, good_ids, bad_ids = image_catalog
    assert codes == [0, 0]
    assert open(os.path.join(output, "LATEST")).read().strip() == "second"
    manifest = json.load(open(os.path.join(version_dir(output, "first"), "manifest.json")))
    counts = manifest["counts"]
    # photo.webp, .bmp and .tiff share the item_id odd/photo: one kept, two duplicates.
    assert counts == {"input": len(good_ids) + len(bad_ids) + 2, "indexed": len(good_ids),
                      "failed": len(bad_ids), "duplicate": 2, "failed_by_stage": {"decode": 4},
                      "reused": 0, "embedded": len(good_ids), "added": len(good_ids),
                      "removed": 0, "changed": 0, "vector_changed": 0}
    assert counts["input"] == counts["indexed"] + counts["failed"] + counts["duplicate"]
    # The second build of the same files reuses every image the first one embedded (and
    # tries the failed ones again).
    second = json.load(open(os.path.join(version_dir(output, "second"), "manifest.json")))
    assert second["counts"] == {**counts, "reused": len(good_ids), "embedded": 0, "added": 0}
    assert second["reuse"]["from_version"] == "first"
    assert manifest["model"]["name"] == "efficientnet_lite0"
    assert manifest["model"]["embedding_dim"] == 1280 and manifest["validation"]["passed"]


def test_every_bad_file_is_in_errors_with_its_stage(two_builds, image_catalog):
    output, _ = two_builds
    _, _, bad_ids = image_catalog
    errors = read_parquet_dir(os.path.join(version_dir(output, "first"), "errors"))
    failed = {row["item_id"]: row for row in errors if row["stage"] != "dedupe"}
    assert {item: row["stage"] for item, row in failed.items()} == bad_ids
    assert failed["odd/huge"]["error_type"] == "ImageTooLargeError"
    assert failed["odd/empty"]["error_type"] == "EmptyImageError"
    assert "truncated" in failed["odd/truncated"]["message"]
    duplicates = [row for row in errors if row["stage"] == "dedupe"]
    assert sorted(row["image_uri"].rsplit(".", 1)[1] for row in duplicates) == ["tiff", "webp"]


def test_every_good_file_is_indexed_with_caption_and_labels(two_builds, image_catalog):
    output, _ = two_builds
    _, good_ids, _ = image_catalog
    rows = read_parquet_dir(os.path.join(version_dir(output, "first"), "metadata"))
    by_id = {row["item_id"]: row for row in rows}
    assert set(by_id) == good_ids
    assert "espresso" in by_id["photos/coffee"]["caption"]
    assert "cat" in by_id["photos/chelsea"]["caption"]
    assert by_id["photos/coffee"]["labels"][0]["label"] == "espresso"
    assert (by_id["odd/exif_rotated"]["width"], by_id["odd/exif_rotated"]["height"]) == (600, 400)
    for row in rows:
        assert row["caption"] and len(row["labels"]) == 5 and row["sha256"]
        assert row["shard"] == shard_of(row["item_id"], 3)


def test_shards_load_in_annoy_and_find_their_own_items(two_builds):
    output, _ = two_builds
    folder = version_dir(output, "first")
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    vectors = {row["item_id"]: np.array(row["vector"])
               for row in read_parquet_dir(os.path.join(folder, "embeddings"))}
    metadata = read_parquet_dir(os.path.join(folder, "metadata"))
    assert len(manifest["index"]["shards"]) == 3
    # too few items to learn a projection from (4 a dimension): the model's own vectors
    assert manifest["projection"] is None and manifest["index"]["dimension"] == 1280
    for shard in manifest["index"]["shards"]:
        index = AnnoyIndex(1280, "angular")
        index.load(os.path.join(folder, shard["index_file"]))
        assert index.get_n_items() == shard["items"] > 0
        for row in (r for r in metadata if r["shard"] == shard["shard"]):
            assert index.get_nns_by_vector(vectors[row["item_id"]], 1) == [row["annoy_id"]]


def test_second_build_is_byte_identical(two_builds):
    output, _ = two_builds
    first, second = (version_dir(output, version) for version in ("first", "second"))
    assert file_digests(os.path.join(first, "index")) == file_digests(os.path.join(second, "index"))
    for part in ("metadata", "embeddings"):
        assert read_parquet_dir(os.path.join(first, part)) == read_parquet_dir(os.path.join(second, part))


def test_csv_catalog_passes_columns_through_and_reports_missing_images(tmp_path, photos, model_cache):
    paths = write_files(str(tmp_path / "img"), {
        "a.jpg": encode(photos["coffee"]), "b.jpg": encode(photos["chelsea"])})
    catalog = tmp_path / "catalog.csv"
    with open(catalog, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["item_id", "image_uri", "title", "price"])
        writer.writerow(["sku-1", "img/a.jpg", "Espresso cup", "4.50"])  # relative to the csv
        writer.writerow(["sku-2", paths["b.jpg"], "Cat poster", "12"])
        writer.writerow(["sku-2", paths["a.jpg"], "Cat poster (dup)", "12"])
        writer.writerow(["sku-3", str(tmp_path / "img/missing.jpg"), "Gone", ""])
        writer.writerow(["", paths["a.jpg"], "no id", "1"])
        writer.writerow(["007", paths["a.jpg"], "TRUE", "0042"])  # kept as written
        writer.writerow(["7", paths["b.jpg"], "1e3", "7"])
        writer.writerow(["   ", paths["a.jpg"], "blank id", "1"])
    output = str(tmp_path / "out")
    assert run(["--catalog", str(catalog), "--output", output, "--num-shards", "2",
                "--version-id", "v1", "--runner", "DirectRunner", *TOLERATE_FAILURES]) == 0
    folder = version_dir(output, "v1")
    rows = {row["item_id"]: row for row in read_parquet_dir(os.path.join(folder, "metadata"))}
    assert set(rows) == {"sku-1", "sku-2", "007", "7"}
    assert rows["sku-1"]["title"] == "Espresso cup" and rows["sku-1"]["price"] == "4.50"
    assert (rows["007"]["title"], rows["007"]["price"]) == ("TRUE", "0042")
    assert (rows["7"]["title"], rows["7"]["price"]) == ("1e3", "7")
    assert rows["sku-2"]["image_uri"] == paths["b.jpg"]  # the first row in catalog order
    errors = {(row["item_id"], row["stage"], row["message"]) for row in
              read_parquet_dir(os.path.join(folder, "errors"))}
    assert {(item, stage) for item, stage, _ in errors} == {
        ("sku-2", "dedupe"), ("sku-3", "fetch"), ("", "read"), ("   ", "read")}
    assert ("   ", "read", "row 8: item_id empty or only whitespace") in errors
    counts = json.load(open(os.path.join(folder, "manifest.json")))["counts"]
    assert (counts["input"], counts["indexed"], counts["failed"], counts["duplicate"]) == (8, 4, 3, 1)


@pytest.mark.parametrize("argv, message", [
    (["--output", "x"], "--catalog"),
    (["--catalog", "x.csv", "--output", "o", "--num-shards", "0"], "at least 1"),
    (["--catalog", "x.csv", "--output", "o", "--bogus-flag", "1"], "--bogus-flag"),
    (["--catalog", "missing.csv", "--output", "o"], "file not found"),
    (["--catalog", "catalog.xlsx", "--output", "o"], ".csv, .jsonl or .parquet"),
])
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("catalog_text, message", [
    ("item_id,image_uri,title\n", "the catalog has no rows"),
    ("item_id,title\nsku-1,x\n", "missing column(s) image_uri"),
    ("", "cannot read it"),
    ("item_id,image_uri,title,title\nsku-1,a.jpg,x,y\n", "duplicate column(s) title"),
    ("item_id,image_uri,,title\nsku-1,a.jpg,x,y\n", "column(s) 3 have no name"),
    ("item_id,image_uri,caption,catalog_caption\nsku-1,a.jpg,x,y\n",
     "catalog_caption would hold two columns"),
])
def test_bad_catalogs_are_one_line_errors_before_any_work(catalog_text, message, tmp_path, capsys):
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(catalog_text)
    assert run(["--catalog", str(catalog), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_glob_that_matches_nothing_is_a_one_line_error(tmp_path, capsys):
    assert run(["--catalog", str(tmp_path / "none" / "*.jpg"), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no file matches this pattern" in err and len(err.splitlines()) == 1


def test_existing_version_is_never_overwritten(two_builds, image_catalog, capsys):
    output, _ = two_builds
    images, _, _ = image_catalog
    assert run(["--catalog", f"{images}/**", "--output", output, "--version-id", "first"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_item_ids_come_from_the_glob_root():
    assert glob_root("gs://b/cat/**/*.jpg") == "gs://b/cat/"
    assert item_id_for_path("gs://b/cat/shoes/red.v2.jpg", "gs://b/cat/") == "shoes/red.v2"


def test_read_catalog_dedupes_jsonl(tmp_path):
    catalog = tmp_path / "c.jsonl"
    catalog.write_text("\n".join(json.dumps(row) for row in [
        {"item_id": "a", "image_uri": "/x/2.jpg", "title": "t"},
        {"item_id": "a", "image_uri": "/x/1.jpg", "title": "t"},
        {"item_id": "b", "image_uri": "/x/3.jpg", "title": None}]) + "\n")
    with BeamTestPipeline() as pipeline:
        out = pipeline | ReadCatalog(str(catalog))
        assert_that(out["items"] | beam.Map(lambda i: (i["item_id"], i["image_uri"])),
                    equal_to([("a", "/x/2.jpg"), ("b", "/x/3.jpg")]), label="items")
        assert_that(out["errors"] | beam.Map(lambda e: (e["item_id"], e["stage"])),
                    equal_to([("a", "dedupe")]), label="errors")
        assert_that(out["input_count"], equal_to([3]), label="count")


# Values a reader could take for a missing value, a number or a boolean: each is a string.
AS_WRITTEN = ["NA", "null", "NULL", "N/A", "n/a", "nan", "NaN", "-nan", "None", "#N/A", "1.#IND",
              "", " ", "007", "1e5", "1.50", "TRUE", "false", "0x1F", "  padded  ", "-0",
              "2026-12-02", "'quoted'", 'say "hi"', "a,b", "line\nbreak", "\u00e9t\u00e9",
              "=SUM(A1)", "\t"]


def test_every_csv_value_is_kept_exactly_as_written(tmp_path):
    """ARCHITECTURE.md: catalog values are kept exactly as written, never guessed. A CSV field
    that reads like a missing value ("NA", "null", "N/A", "nan", empty), a number or a boolean
    is that string, in item_id too (an item "NA" is an item, not a row without an id)."""
    import csv

    catalog = tmp_path / "c.csv"
    with open(catalog, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["item_id", "image_uri", "title", "size"])
        for n, value in enumerate(AS_WRITTEN):
            writer.writerow([value if value.strip() else f"blank-{n}", f"/x/{n}.jpg", value,
                             AS_WRITTEN[-1 - n]])
    with BeamTestPipeline() as pipeline:
        out = pipeline | ReadCatalog(str(catalog))
        assert_that(out["items"] | beam.Map(lambda i: (i["item_id"], i["passthrough"]["title"],
                                                        i["passthrough"]["size"])),
                    equal_to([(value if value.strip() else f"blank-{n}", value,
                               AS_WRITTEN[-1 - n]) for n, value in enumerate(AS_WRITTEN)]),
                    label="items")
        assert_that(out["errors"], equal_to([]), label="errors")


def test_json_lines_values_keep_their_spelling_and_every_key_is_a_column(tmp_path):
    """A JSON number is written out as the catalog wrote it ("1.50", "1e3", not 1.5, 1000.0),
    true/false as JSON spells them, and a key that only later rows have is a column too."""
    from transforms.read_catalog import catalog_columns

    catalog = tmp_path / "c.jsonl"
    catalog.write_text("\n".join([
        '{"item_id": "a", "image_uri": "/x/1.jpg", "price": 1.50, "stock": 7}',
        '{"item_id": "b", "image_uri": "/x/2.jpg", "price": 1e3, "in_stock": true}',
        '{"item_id": 0012, "image_uri": "/x/3.jpg", "brand": "NA", "price": -0}'
        .replace("0012", "12")]) + "\n")
    assert catalog_columns(str(catalog)) == ["brand", "in_stock", "price", "stock"]
    with BeamTestPipeline() as pipeline:
        out = pipeline | ReadCatalog(str(catalog))
        assert_that(out["items"] | beam.Map(lambda i: (i["item_id"], i["passthrough"])),
                    equal_to([("a", {"brand": None, "in_stock": None, "price": "1.50",
                                     "stock": "7"}),
                              ("b", {"brand": None, "in_stock": "true", "price": "1e3",
                                     "stock": None}),
                              ("12", {"brand": "NA", "in_stock": None, "price": "-0",
                                      "stock": None})]))


def test_read_catalog_reports_bad_json_lines_with_their_line_number(tmp_path):
    catalog = tmp_path / "c.jsonl"
    catalog.write_text("\n".join([
        json.dumps({"item_id": "a", "image_uri": "/x/1.jpg", "title": "t"}),
        '{"item_id": "b", "image_uri": ',
        "[1, 2]",
        "",
        json.dumps({"item_id": 7, "image_uri": "/x/2.jpg", "title": {"nested": True}}),
    ]) + "\n")
    with BeamTestPipeline() as pipeline:
        out = pipeline | ReadCatalog(str(catalog))
        assert_that(out["items"] | beam.Map(lambda i: (i["item_id"], i["row"], i["passthrough"])),
                    equal_to([("a", 1, {"title": "t"}), ("7", 5, {"title": '{"nested": true}'})]),
                    label="items")
        assert_that(out["errors"] | beam.Map(lambda e: (e["stage"], e["message"].split(" (")[0])),
                    equal_to([("read", "line 2: not valid JSON"),
                              ("read", "line 3: a JSON list, not an object")]), label="errors")
        assert_that(out["input_count"], equal_to([4]), label="count")


def test_group_into_shards_groups_by_the_stable_hash_of_item_id(tmp_path):
    """Each item goes to the shard its item_id hashes to, its vector staged in a file of
    that shard's, which the record names."""
    from transforms.shard import read_staged

    items = [{"item_id": f"item-{n}", "embedding": np.full(3, n, np.float32)} for n in (3, 1, 2)]
    version = str(tmp_path)
    with BeamTestPipeline() as pipeline:
        num_shards = pipeline | "NumShards" >> beam.Create([8])
        shards = pipeline | beam.Create(items) | GroupIntoShards(num_shards, version)
        summary = shards | beam.MapTuple(lambda shard, records: (shard, sorted(
            (record[0], read_staged(version, record[2][0])[record[2][1]].tolist())
            for record in records if f"shard-{shard:05d}/" in record[2][0])))
        expected = {}
        for item in items:
            expected.setdefault(shard_of(item["item_id"], 8), []).append(
                (item["item_id"], item["embedding"].tolist()))
        assert_that(summary, equal_to([(k, sorted(v)) for k, v in expected.items()]))


def test_shard_assignment_is_stable():
    # Pinned values: a change here would silently reshuffle every published index.
    assert [shard_of(f"sku-{n}", 8) for n in range(6)] == [
        int.from_bytes(hashlib.sha256(f"sku-{n}".encode()).digest()[:8], "big") % 8
        for n in range(6)]
    assert index_file(2, 8) == "index/shard-00002-of-00008.ann"


def test_embeddings_parquet_keeps_every_vector_in_order_across_row_groups(monkeypatch, tmp_path):
    monkeypatch.setattr("transforms.write_metadata.ROWS_PER_GROUP", 2)
    vectors = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    table = pa.table({"item_id": [f"p{n}" for n in range(5)],
                      "sha256": [f"h{n}" for n in range(5)],
                      "source_stamp": [f"size={n}" for n in range(5)]})
    path = tmp_path / "embeddings.parquet"
    write_embeddings_parquet(table, vectors, "fp", str(path))
    assert pq.ParquetFile(path).num_row_groups == 3
    rows = pq.read_table(path).to_pylist()
    assert [row["item_id"] for row in rows] == ["p0", "p1", "p2", "p3", "p4"]
    np.testing.assert_array_equal(np.array([row["vector"] for row in rows]), vectors)
    assert {row["model_fingerprint"] for row in rows} == {"fp"}


PROGRESS_LINE = re.compile(r"progress: reading the catalog|progress: [\d,]+ of [\d,]+ items "
                           r"\(\d+\.\d%\), (\d+\.\d images/s|images/s not known yet), "
                           r"[\d,]+ failed(, ETA (\d+h\d\dm|\d+m\d\ds)|, building the shards)?")


def test_a_progress_line_never_shows_a_rate_or_an_eta_it_does_not_know():
    from catalog_index.progress import progress_line

    assert progress_line({}, None) == "progress: reading the catalog"
    counts = {"read": 2000, "captioned": 1716}
    assert progress_line(counts, None) == \
        "progress: 1,716 of 2,000 items (85.8%), images/s not known yet, 0 failed"
    assert progress_line(counts, 28.4) == \
        "progress: 1,716 of 2,000 items (85.8%), 28.4 images/s, 0 failed, ETA 0m10s"
    assert progress_line({**counts, "captioned": 1990, "failed_decode": 10}, 28.4) == \
        "progress: 2,000 of 2,000 items (100.0%), 28.4 images/s, 10 failed, building the shards"


@pytest.mark.e2e
def test_a_build_prints_progress_lines_and_no_library_logs(image_catalog, tmp_path, capsys):
    images, good_ids, bad_ids = image_catalog
    assert run(["--catalog", f"{images}/**", "--output", str(tmp_path), "--version-id", "p",
                "--progress-seconds", "0.2", *TOLERATE_FAILURES]) == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    progress = [line for line in lines if line.startswith("progress:")]
    assert progress and all(PROGRESS_LINE.fullmatch(line) for line in progress), progress
    total = len(good_ids) + len(bad_ids) + 2
    assert progress[-1].startswith(f"progress: {total} of {total} items (100.0%)")
    assert f"{len(bad_ids)} failed" in progress[-1]
    finished = [line for line in progress if line.startswith(f"progress: {total} of")]
    assert len({line.split(", ")[1] for line in finished}) == 1  # the rate stops moving
    assert not [line for line in lines if not line.startswith("progress:")], lines
    log = os.path.join(tempfile.gettempdir(), "catalog-index", "build-p.log")
    assert os.path.exists(log)


def test_build_help_reads_as_plain_text(capsys):
    """Switches show as switches (not --replace [REPLACE]), no reStructuredText backticks,
    and --dims says the index can be wider than N (the LDA part)."""
    with pytest.raises(SystemExit) as exited:
        run(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for switch in ("--replace", "--full", "--allow-model-change", "--no-wait"):
        assert f"[{switch}]" in " ".join(out.split()), switch
    assert "[REPLACE]" not in out and "[FULL]" not in out and "``" not in out
    assert "256 + 9 = 265" in " ".join(out.split())


@pytest.mark.parametrize("argv, expected", [
    (["--full"], True), (["--full=true"], True), (["--full=false"], False),
    (["--full", "false"], False), (["--full", "--replace=1"], True), ([], False)])
def test_switches_take_a_value_as_a_template_passes_it(argv, expected):
    from pipelines.build_index import parse_args

    args, _ = parse_args(["--catalog", "c.csv", "--output", "out"] + argv)
    assert args.full is expected
