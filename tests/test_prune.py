"""catalog-index prune: old versions go, never the published one nor a rollback target."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from catalog_index import storage
from catalog_index.schema import version_dir
from pipelines.build_index import run as build
from pipelines.prune import run as prune
from pipelines.rollback import run as rollback
from search import PublishedIndex
from tests.real_images import encode, write_files

PHOTOS = ("coffee", "chelsea", "rocket", "astronaut")


@pytest.fixture(scope="module")
def one_version(tmp_path_factory, photos, model_cache):
    """A real built version, which the tests copy under other ids."""
    root = tmp_path_factory.mktemp("prune")
    write_files(str(root / "images"), {f"{name}.jpg": encode(photos[name]) for name in PHOTOS})
    output = str(root / "index")
    assert build(["--catalog", str(root / "images" / "*"), "--output", output,
                  "--num-shards", "2", "--version-id", "built"]) == 0
    return version_dir(output, "built")


def add_version(root, built, version_id, hour, passed=True):
    """A copy of the built version as ``version_id``, created at ``hour`` on one night,
    validated or not (every file stays what the manifest says: it opens)."""
    folder = version_dir(str(root), version_id)
    shutil.copytree(built, folder)
    path = os.path.join(folder, "manifest.json")
    manifest = json.load(open(path))
    manifest.update(version_id=version_id, created_at=f"2026-12-01T{hour:02d}:00:00+00:00")
    manifest["validation"]["passed"] = passed
    json.dump(manifest, open(path, "w"))


def set_latest(root, version_id):
    (root / "LATEST").write_text(version_id + "\n")


@pytest.fixture
def nights(tmp_path, one_version):
    """v1..v6 validated but v3 and v7, which failed; v8 has no manifest (a build still
    running); LATEST was rolled back from v6 to v4."""
    root = tmp_path / "index"
    for hour, version_id in enumerate(["v1", "v2", "v3", "v4", "v5", "v6", "v7"], start=1):
        add_version(root, one_version, version_id, hour, passed=version_id not in ("v3", "v7"))
    os.makedirs(root / "versions" / "v8" / "index")
    (root / "versions" / "v8" / "index" / "shard-00000-of-00002.ann").write_bytes(b"partial")
    set_latest(root, "v4")
    return root


def remaining(root) -> list:
    return sorted(storage.list_folders(os.path.join(str(root), "versions")))


def lines_by_version(out: str) -> dict:
    """version id -> (action, reason) from prune's lines: action, id and reason, in columns."""
    table = {}
    for line in out.splitlines():
        version_id, reason = line[14:].split("  ", 1)
        table[version_id] = (line[:12].strip(), reason)
    return table


def test_keeps_latest_the_newest_validated_recent_failures_and_running_builds(nights, capsys):
    reader = PublishedIndex.open(str(nights), version="v1")  # a reader still on v1
    before = [hit.item_id for hit in reader.query_item("coffee", k=3)]
    assert prune(["--index", str(nights), "--keep", "2"]) == 0
    out = capsys.readouterr().out
    assert remaining(nights) == ["v4", "v5", "v6", "v7", "v8"]
    table = lines_by_version(out)
    assert len(out.splitlines()) == 8 and list(table) == [
        "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8"]  # oldest first, then the incomplete
    assert table["v4"] == ("keep", "published: LATEST names it")
    assert table["v6"][0] == table["v5"][0] == "keep" and "rollback target" in table["v6"][1]
    assert table["v7"][0] == "keep" and "failed validation after the published" in table["v7"][1]
    assert table["v3"] == ("delete", "failed validation before the published version")
    assert table["v2"] == table["v1"] == ("delete", "validated, older than the 2 newest")
    assert table["v8"][0] == "leave" and "no manifest.json" in table["v8"][1]
    # the published version opens; a reader that had v1 open still answers
    assert PublishedIndex.open(str(nights)).version_id == "v4"
    assert [hit.item_id for hit in reader.query_item("coffee", k=3)] == before
    # the version rolled back from is still there to roll forward to; a deleted one is not
    assert rollback(["--index", str(nights), "--version", "v6"]) == 0
    assert rollback(["--index", str(nights), "--version", "v2"]) == 1
    assert "no manifest.json" in capsys.readouterr().err


def test_dry_run_deletes_nothing(nights, capsys):
    assert prune(["--index", str(nights), "--keep", "2", "--dry-run"]) == 0
    table = lines_by_version(capsys.readouterr().out)
    assert remaining(nights) == ["v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8"]
    assert [v for v, (action, _) in table.items() if action == "would delete"] == \
        ["v1", "v2", "v3"]


def test_keep_0_still_keeps_latest(nights, capsys):
    assert prune(["--index", str(nights), "--keep", "0"]) == 0
    assert remaining(nights) == ["v4", "v7", "v8"]
    assert PublishedIndex.open(str(nights)).version_id == "v4"
    capsys.readouterr()
    assert prune(["--index", str(nights), "--keep", "0"]) == 0  # a second run: nothing to do
    assert remaining(nights) == ["v4", "v7", "v8"]
    assert [action for action, _ in lines_by_version(capsys.readouterr().out).values()] == \
        ["keep", "keep", "leave"]


def test_latest_older_than_the_n_newest_is_kept_beside_them(nights):
    set_latest(nights, "v1")
    assert prune(["--index", str(nights), "--keep", "1"]) == 0
    # v6 is the newest validated; v1 is published; every failure after v1 is evidence
    assert remaining(nights) == ["v1", "v3", "v6", "v7", "v8"]


@pytest.mark.parametrize("argv, message", [
    (["--keep", "2"], "the following arguments are required: --index"),
    (["--index", "ROOT"], "the following arguments are required: --keep"),
    (["--index", "ROOT", "--keep", "-1"], "-1 must be 0 or more"),
    (["--index", "ROOT", "--keep", "two"], "'two' is not a whole number"),
    (["--index", "ROOT", "--keep", "2", "--dry"], "unrecognized arguments: --dry"),
])
def test_bad_flags_are_one_line_and_exit_2(nights, argv, message, capsys):
    argv = [str(nights) if arg == "ROOT" else arg for arg in argv]
    assert prune(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("catalog-index prune: error: ") and message in err
    assert remaining(nights) == ["v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8"]


@pytest.mark.parametrize("latest, message", [
    (None, "no published version"),
    ("../v1", "is not a version id"),
    ("v8", "LATEST names v8, which is not a complete version"),
    ("v9", "LATEST names v9, which is not a complete version"),
])
def test_no_usable_latest_deletes_nothing(nights, latest, message, capsys):
    if latest is None:
        os.remove(nights / "LATEST")
    else:
        set_latest(nights, latest)
    assert prune(["--index", str(nights), "--keep", "1"]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1
    assert remaining(nights) == ["v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8"]


def test_a_rollback_to_a_version_being_deleted_stops_prune(nights, monkeypatch, capsys):
    """A rollback that read v2's manifest just before prune deleted it, and wrote LATEST
    just after: prune puts the manifest back and stops."""
    real_delete = storage.delete_file

    def delete_then_rollback(path):
        real_delete(path)
        if "/v2/" in path:
            set_latest(nights, "v2")

    monkeypatch.setattr(storage, "delete_file", delete_then_rollback)
    assert prune(["--index", str(nights), "--keep", "2"]) == 1
    assert "LATEST changed while pruning" in capsys.readouterr().err
    assert remaining(nights) == ["v2", "v3", "v4", "v5", "v6", "v7", "v8"]  # v1 went first
    assert PublishedIndex.open(str(nights)).version_id == "v2"  # complete again


def test_prune_on_gs(gcs_bucket, one_version, tmp_path, capsys):
    local = tmp_path / "index"
    for hour, version_id in enumerate(["v1", "v2", "v3"], start=1):
        add_version(local, one_version, version_id, hour, passed=version_id != "v2")
    set_latest(local, "v3")
    root = f"gs://{gcs_bucket}/index"
    for path in storage.list_files(str(local)):
        if not path.endswith(".tflite"):  # 18 MB a copy; prune does not read it
            storage.upload_file(path, f"{root}/{os.path.relpath(path, local)}")
    storage.write_bytes(f"{root}/versions/v4/index/shard-00000-of-00002.ann", b"partial")
    assert storage.list_folders(f"{root}/versions") == ["v1", "v2", "v3", "v4"]
    assert prune(["--index", root, "--keep", "1", "--dry-run"]) == 0
    assert storage.list_folders(f"{root}/versions") == ["v1", "v2", "v3", "v4"]
    capsys.readouterr()
    assert prune(["--index", root, "--keep", "1"]) == 0
    assert {version: action for version, (action, _) in
            lines_by_version(capsys.readouterr().out).items()} == {
        "v1": "delete", "v2": "delete", "v3": "keep", "v4": "leave"}
    assert storage.list_folders(f"{root}/versions") == ["v3", "v4"]
    assert storage.list_files(f"{root}/versions/v1") == []
    assert storage.read_text(f"{root}/LATEST") == "v3\n"
