"""Incremental nightly builds: night B built on top of the published night A reuses what A
knows of unchanged images, and publishes the same index, metadata and embeddings bytes as
a full build of B, with changes/ saying what changed."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from catalog_index import storage
from catalog_index.schema import join, version_dir
from pipelines.build_index import run as build
from search.index import PublishedIndex
from tests.fault_proxy import FaultProxy
from tests.real_images import encode

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "china", "flower", "camera", "clock")
ARTIFACTS = ("index", "metadata", "embeddings", "projection")


def night_a(photos) -> dict:
    """item_id -> (image bytes, title): each photo and its mirror image."""
    items = {}
    for name in PHOTOS:
        items[f"sku-{name}"] = (encode(photos[name]), name.title())
        items[f"sku-{name}-mirror"] = (encode(np.ascontiguousarray(photos[name][:, ::-1])),
                                       f"{name.title()} mirrored")
    return items


def write_night(folder: str, items: dict) -> str:
    """Image files (rewritten only when their bytes differ) and a catalog CSV naming them."""
    rows = []
    for item_id, (data, title) in sorted(items.items()):
        uri = join(folder, "images", f"{item_id}.jpg")
        if not (storage.exists(uri) and storage.read_bytes(uri) == data):
            storage.write_bytes(uri, data)
        rows.append([item_id, uri, title])
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["item_id", "image_uri", "title"])
    writer.writerows(rows)
    catalog = join(folder, "catalog.csv")
    storage.write_text(catalog, text.getvalue())
    return catalog


def next_night(items: dict, photos) -> tuple:
    """Night B: one photo replaced at the same path, one item added, one removed, one title
    changed. -> (items, the changes expected)."""
    items = dict(items)
    items["sku-coffee"] = (encode(photos["moon"]), "Coffee")  # replaced in place
    items["sku-page"] = (encode(photos["page"]), "Page")  # added
    del items["sku-rocket-mirror"]  # removed
    items["sku-clock"] = (items["sku-clock"][0], "Clock, wall")  # metadata only
    return items, {"sku-coffee": "image_changed", "sku-page": "added",
                   "sku-rocket-mirror": "removed", "sku-clock": "metadata_changed"}


def files_of(root: str, version: str) -> dict:
    folder = version_dir(root, version)
    return {path[len(folder):]: storage.read_bytes(path)
            for kind in ARTIFACTS for path in storage.list_files(join(folder, kind))}


def manifest(root: str, version: str) -> dict:
    return json.loads(storage.read_text(join(version_dir(root, version),
                                                     "manifest.json")))


def vectors(root: str, version: str) -> dict:
    folder = version_dir(root, version)
    rows = {}
    for path in storage.list_files(join(folder, "embeddings")):
        for row in pq.read_table(io.BytesIO(storage.read_bytes(path))).to_pylist():
            rows[row["item_id"]] = np.asarray(row["vector"], np.float32)
    return rows


ARGS = ["--num-shards", "2", "--dims", "4"]  # 16 items: 4 a dimension, enough to fit on


@pytest.fixture(scope="module")
def nights(tmp_path_factory, photos, model_cache):
    """A built; B built on top of it; B built in full into a fresh root."""
    folder = str(tmp_path_factory.mktemp("nights"))
    root, fresh = os.path.join(folder, "index"), os.path.join(folder, "fresh")
    items_a = night_a(photos)
    assert build(["--catalog", write_night(folder, items_a), "--output", root,
                  "--version-id", "a", *ARGS]) == 0
    items_b, expected = next_night(items_a, photos)
    catalog_b = write_night(folder, items_b)
    # touched, not changed: the same bytes written again (a new mtime)
    storage.write_bytes(os.path.join(folder, "images", "sku-chelsea.jpg"),
                        items_b["sku-chelsea"][0])
    assert build(["--catalog", catalog_b, "--output", root, "--version-id", "b", *ARGS]) == 0
    # a full build fits its own projection; given night A's, it must equal the nightly one
    assert build(["--catalog", catalog_b, "--output", fresh, "--version-id", "b", *ARGS,
                  "--projection-from", version_dir(root, "a")]) == 0
    return {"root": root, "fresh": fresh, "folder": folder, "catalog_b": catalog_b,
            "items_a": items_a, "items_b": items_b, "expected": expected}


def test_night_b_on_top_of_a_publishes_the_bytes_of_a_full_build(nights):
    incremental = files_of(nights["root"], "b")
    full = files_of(nights["fresh"], "b")
    assert sorted(incremental) == sorted(full) and len(full) == 7
    assert incremental == full
    # B kept A's projection: two new items say too little to fit again on
    projection = manifest(nights["root"], "b")["projection"]
    assert projection["origin"] == {"carried_from": "a", "drift": {
        "items": 2, "ratio": projection["origin"]["drift"]["ratio"], "threshold": 1.25}}
    assert projection["sha256"] == manifest(nights["root"], "a")["projection"]["sha256"]
    assert manifest(nights["fresh"], "b")["projection"]["origin"] == {
        "given": version_dir(nights["root"], "a")}


def test_only_new_and_changed_images_are_embedded(nights):
    counts = manifest(nights["root"], "b")["counts"]
    assert counts["indexed"] == len(nights["items_b"]) == 16
    # sku-coffee (replaced) and sku-page (added); sku-chelsea was read again (touched) and
    # reused once its sha256 was found unchanged
    assert (counts["embedded"], counts["reused"]) == (2, 14)
    assert (counts["added"], counts["removed"], counts["changed"]) == (1, 1, 2)
    assert counts["input"] == counts["indexed"] + counts["failed"] + counts["duplicate"]
    report = json.loads(storage.read_text(join(version_dir(nights["root"], "b"), "report.json")))
    assert report["counts"] == counts
    page = storage.read_text(join(version_dir(nights["root"], "b"), "report.html"))
    assert "<td>reused from version a</td><td>14</td>" in page
    assert "<td>added since the previous version</td><td>1</td>" in page
    full = manifest(nights["fresh"], "b")
    assert (full["counts"]["embedded"], full["counts"]["reused"]) == (16, 0)
    assert full["reuse"]["full_build_reason"] == "no published version yet"


def test_a_catalog_moved_to_a_new_folder_reuses_its_images_by_content(nights, photos):
    """Every image of night B exported again to a new folder (same bytes, new URIs), one of
    them replaced and one added: only those two are decoded and embedded, and the files are
    those of a full build in the same vector space."""
    folder = os.path.join(nights["folder"], "moved")
    items = dict(nights["items_b"])
    items["sku-flower"] = (encode(photos["hubble_deep_field"]), "Flower")  # other bytes
    items["sku-text"] = (encode(photos["text"]), "Text")  # added
    catalog = write_night(folder, items)
    root = os.path.join(nights["folder"], "moved-index")  # the other tests' root keeps b
    shutil.copytree(nights["root"], root)
    assert build(["--catalog", catalog, "--output", root, "--version-id", "moved", *ARGS]) == 0
    counts = manifest(root, "moved")["counts"]
    assert (counts["embedded"], counts["reused"], counts["indexed"]) == (2, 15, 17)
    fresh = os.path.join(nights["folder"], "moved-full")
    assert build(["--catalog", catalog, "--output", fresh, "--version-id", "moved", *ARGS,
                  "--projection-from", version_dir(root, "b")]) == 0
    assert files_of(root, "moved") == files_of(fresh, "moved")
    changes = {row["item_id"]: row["change"]
               for row in PublishedIndex.open(root, version="moved").changes().to_pylist()}
    assert changes["sku-flower"] == "image_changed" and changes["sku-text"] == "added"
    assert changes["sku-chelsea"] == "metadata_changed"  # its image_uri is another


def test_changes_list_exactly_what_changed(nights):
    index = PublishedIndex.open(nights["root"])
    assert index.version_id == "b"
    changes = index.changes().to_pylist()
    assert {row["item_id"]: row["change"] for row in changes} == nights["expected"]
    assert [row["item_id"] for row in changes] == sorted(nights["expected"])
    first = PublishedIndex.open(nights["root"], version="a").changes()
    assert first.column("change").to_pylist() == ["added"] * len(nights["items_a"])


def test_changes_are_checked_against_the_manifest(nights, tmp_path):
    from search.index import IndexIntegrityError

    copy = str(tmp_path / "copy")
    shutil.copytree(nights["fresh"], copy)
    path = os.path.join(version_dir(copy, "b"), "changes", "part-00000-of-00002.parquet")
    pq.write_table(pq.read_table(path).slice(1), path)  # one row lost
    with pytest.raises(IndexIntegrityError, match="sha256 differs"):
        PublishedIndex.open(copy).changes()


def test_a_photo_replaced_at_the_same_path_is_embedded_again(nights):
    before, after = vectors(nights["root"], "a"), vectors(nights["root"], "b")
    assert not np.array_equal(after["sku-coffee"], before["sku-coffee"])
    # the moon photo's vector, bit for bit what a full build gives it
    assert np.array_equal(after["sku-coffee"], vectors(nights["fresh"], "b")["sku-coffee"])
    assert all(np.array_equal(after[item], before[item]) for item in after
               if item not in nights["expected"])


def test_a_model_change_builds_everything_again_and_says_why(nights, tmp_path, capfd):
    import keras

    pixels = keras.Input((224, 224, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, strides=8)(pixels))
    tiny = keras.Model(pixels, keras.layers.Dense(16)(features))
    path = str(tmp_path / "tiny.keras")
    tiny.save(path)
    capfd.readouterr()
    assert build(["--catalog", nights["catalog_b"], "--output", nights["root"],
                  "--version-id", "c", "--model", path, "--allow-model-change", *ARGS]) == 0
    err = capfd.readouterr().err
    reason = [line for line in err.splitlines() if "full build" in line]
    assert reason == [reason[0]] and "version b was built with another model" in reason[0]
    counts = manifest(nights["root"], "c")["counts"]
    assert (counts["embedded"], counts["reused"]) == (16, 0)


def test_full_forces_a_full_build_with_the_same_bytes(nights):
    root = nights["root"]
    assert build(["--catalog", nights["catalog_b"], "--output", root, "--version-id", "b-full",
                  "--full", "--allow-model-change", *ARGS,
                  "--projection-from", version_dir(root, "a")]) == 0
    assert files_of(root, "b-full") == files_of(nights["fresh"], "b")
    found = manifest(root, "b-full")
    assert (found["counts"]["embedded"], found["counts"]["reused"]) == (16, 0)
    assert found["reuse"]["full_build_reason"] == "--full"


def test_on_gcs_only_new_and_changed_objects_are_downloaded(gcs_bucket, photos, model_cache,
                                                            monkeypatch):
    folder, root = f"gs://{gcs_bucket}", f"gs://{gcs_bucket}/index"
    items_a = night_a(photos)
    assert build(["--catalog", write_night(folder, items_a), "--output", root,
                  "--version-id", "a", *ARGS]) == 0
    items_b, _ = next_night(items_a, photos)
    catalog_b = write_night(folder, items_b)
    # rewritten with the same bytes: a new generation, the same checksums
    storage.write_bytes(f"{folder}/images/sku-chelsea.jpg", items_b["sku-chelsea"][0])
    emulator = os.environ["STORAGE_EMULATOR_HOST"]
    proxy = FaultProxy(emulator)  # no faults: it only logs the requests
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    storage.gcs_client.cache_clear()
    try:
        assert build(["--catalog", catalog_b, "--output", root, "--version-id", "b",
                      *ARGS]) == 0
    finally:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
        storage.gcs_client.cache_clear()
        proxy.stop()
    # The build's own reads come before the report reads the new version back (and some
    # images again, for its thumbnails).
    log = [(method, path) for _, method, path, _ in proxy.log]
    report_starts = next(n for n, (method, path) in enumerate(log)
                         if method == "GET" and "/download/" in path and "versions%2Fb%2F" in path)
    downloaded = sorted(path.split("images%2F")[1].split("?")[0]
                        for method, path in log[:report_starts]
                        if method == "GET" and "/download/" in path and "images%2F" in path)
    # each new or changed object twice (hashed, to look its bytes up among the version's;
    # then read to be decoded), no other object at all
    assert downloaded == ["sku-coffee.jpg"] * 2 + ["sku-page.jpg"] * 2
    listings = [path for method, path in log if method == "GET" and "/o?" in path
                and "prefix=images%2F" in path]
    assert len(listings) == 1  # one folder, one page
    counts = manifest(root, "b")["counts"]
    assert (counts["embedded"], counts["reused"]) == (2, 14)
