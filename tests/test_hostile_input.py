"""Careless and hostile input (issue 17): each case is one row of a table, run against one
small real catalog. A row names what the user does and what must come out: the exit status,
a one-line message, and what must hold of the files afterwards."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest

from catalog_index import storage
from catalog_index.schema import version_dir
from pipelines.build_index import run as build
from pipelines.rollback import run as rollback
from search.cli import run as query
from tests.real_images import encode, write_files

PHOTOS = ("coffee", "chelsea", "rocket", "astronaut", "camera", "china")


@pytest.fixture(scope="module")
def published(tmp_path_factory, photos, model_cache):
    """A catalog with odd rows and files, built and published as v1."""
    root = tmp_path_factory.mktemp("hostile")
    paths = write_files(str(root / "img"), {f"{n}.jpg": encode(photos[n]) for n in PHOTOS})
    secret = root / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    fifo = root / "pipe.jpg"
    os.mkfifo(fifo)
    big = root / "big.jpg"
    with open(big, "wb") as stream:
        stream.truncate(2_000_000)  # sparse: a large file that costs no disk
    catalog = root / "catalog.csv"
    with open(catalog, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["item_id", "image_uri", "title", "caption", "shard"])
        for name in PHOTOS:
            writer.writerow([name, paths[f"{name}.jpg"], f"A {name}", f"the shop's {name}", "7"])
        writer.writerow(["evil\x1b[2Jid", paths["coffee.jpg"], "escape codes in the id", "", ""])
        writer.writerow(["secret", str(secret), "not an image", "", ""])
        writer.writerow(["fifo", str(fifo), "a named pipe", "", ""])
        writer.writerow(["big", str(big), "over the byte limit", "", ""])
        writer.writerow(["folder", str(root / "img"), "a directory", "", ""])
        writer.writerow(["ftp", "ftp://example.invalid/x.jpg", "another scheme", "", ""])
    output = str(root / "out")
    assert build(["--catalog", str(catalog), "--output", output, "--version-id", "v1",
                  "--max-image-bytes", "1000000", "--max-failure-rate", "1"]) == 0
    return root, output


def errors_of(output, version="v1"):
    folder = os.path.join(version_dir(output, version), "errors")
    rows = [row for name in sorted(os.listdir(folder))
            for row in pq.read_table(os.path.join(folder, name)).to_pylist()]
    return {row["item_id"]: row for row in rows}


@pytest.mark.parametrize("item_id, stage, error_type, says", [
    ("secret", "decode", "UnsupportedImageError", "not an image"),
    ("fifo", "fetch", "ImageFileError", "not a regular file"),
    ("folder", "fetch", "ImageFileError", "not a regular file"),
    ("big", "fetch", "ImageFileError", "larger than the 1,000,000-byte limit"),
    ("ftp", "fetch", "UnsupportedUri", "unsupported URI scheme 'ftp'"),
])
def test_bad_images_become_error_rows_without_their_contents(published, item_id, stage,
                                                             error_type, says):
    _, output = published
    row = errors_of(output)[item_id]
    assert (row["stage"], row["error_type"]) == (stage, error_type)
    assert says in row["message"]
    report = open(os.path.join(version_dir(output, "v1"), "report.html")).read()
    for leaked in ("root:x", "/bin/bash"):
        assert leaked not in row["message"] and leaked not in report


def one_line_error(capsys):
    """The one line a failed command prints, besides the progress lines a build prints
    every 10 s (a loaded machine makes even a small build that slow)."""
    lines = [line for line in capsys.readouterr().err.strip().splitlines()
             if not line.startswith("progress: ")]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def damaged_root(published, tmp_path, latest):
    """A copy of the published root whose LATEST holds ``latest`` (bytes)."""
    _, output = published
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    (copy / "LATEST").write_bytes(latest)
    return str(copy)


@pytest.mark.parametrize("latest, says", [
    (b"../../somewhere/evil\n", "is not a version id"),
    (b"/etc\n", "is not a version id"),
    (b"\xff\xfe\n", "is not text"),
])
def test_latest_outside_the_grammar_is_refused(published, tmp_path, capsys, latest, says):
    root = damaged_root(published, tmp_path, latest)
    assert query(["--index", root, "--item-id", "coffee"]) == 1
    assert says in one_line_error(capsys)


@pytest.mark.parametrize("argv, says", [
    (["--index", "ROOT"], "the following arguments are required: --version"),
    (["--index", "ROOT", "--version", "v1", "--forse"], "unrecognized arguments: --forse")])
def test_rollback_mistakes_are_one_line(published, capsys, argv, says):
    _, output = published
    assert rollback([output if arg == "ROOT" else arg for arg in argv]) == 2
    assert says in one_line_error(capsys)


@pytest.mark.parametrize("argv, status, says", [
    (["--item-id", "coffee", "--version", "../v1"], 1, "is not a version id"),
    (["--item-id", ""], 2, "--item-id must not be empty"),
    (["--item-id", "coffee", "-k", "99999999999"], 2, "-k must be between 1 and 10,000"),
    (["--item-id", "no-such-item"], 1, "is not in version v1"),
])
def test_query_mistakes_are_one_line(published, capsys, argv, status, says):
    _, output = published
    assert query(["--index", output, *argv]) == status
    assert says in one_line_error(capsys)


@pytest.mark.parametrize("what", ["a folder", "a FIFO"])
def test_query_image_reads_only_regular_files(published, capsys, what):
    root, output = published
    path = str(root / "img") if what == "a folder" else str(root / "pipe.jpg")
    result = {}
    worker = threading.Thread(target=lambda: result.update(code=query(
        ["--index", output, "--image", path])), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), f"query --image on {what} hangs"
    assert result["code"] == 1
    assert "not a regular file" in one_line_error(capsys)


def test_text_output_escapes_control_characters(published, capsys):
    _, output = published
    assert query(["--index", output, "--item-id", "coffee", "-k", "10"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "evil\\x1b[2Jid" in out


def test_rollback_refuses_a_path_for_a_version(published, capsys):
    _, output = published
    assert rollback(["--index", output, "--version", "../../somewhere/evil"]) == 2
    assert "is not a version id" in one_line_error(capsys)
    assert open(os.path.join(output, "LATEST")).read().strip() == "v1"


def test_replace_never_takes_the_published_version_away(published, capsys):
    root, output = published
    assert build(["--catalog", str(root / "catalog.csv"), "--output", output,
                  "--version-id", "v1", "--replace"]) == 2
    assert "is the published one" in one_line_error(capsys)
    assert open(os.path.join(output, "LATEST")).read().strip() == "v1"
    manifest = json.load(open(os.path.join(version_dir(output, "v1"), "manifest.json")))
    assert manifest["validation"]["passed"]


def test_reserved_catalog_columns_pass_through_renamed(published):
    _, output = published
    folder = os.path.join(version_dir(output, "v1"), "metadata")
    rows = {row["item_id"]: row for name in sorted(os.listdir(folder))
            for row in pq.read_table(os.path.join(folder, name)).to_pylist()}
    coffee = rows["coffee"]
    assert coffee["catalog_caption"] == "the shop's coffee" and coffee["catalog_shard"] == "7"
    assert coffee["caption"] != "the shop's coffee" and isinstance(coffee["shard"], int)


def test_a_latest_that_cannot_be_written_ends_in_the_rollback_command(published, tmp_path,
                                                                      capsys, monkeypatch):
    from catalog_index import storage

    root, _ = published
    output = str(tmp_path / "out")

    def storage_down(*args, **kwargs):
        raise ConnectionError("503 Service Unavailable, retries exhausted")

    monkeypatch.setattr(storage, "replace_latest", storage_down)
    assert build(["--catalog", str(root / "catalog.csv"), "--output", output,
                  "--version-id", "v9", "--max-failure-rate", "1"]) == 1
    err = one_line_error(capsys)
    assert "version v9 is complete and validated" in err
    assert f"catalog-index rollback --index {output} --version v9" in err
    monkeypatch.undo()
    assert rollback(["--index", output, "--version", "v9"]) == 0
    assert open(os.path.join(output, "LATEST")).read().strip() == "v9"


def test_an_output_root_that_is_a_file_is_a_usage_error(published, tmp_path, capsys):
    root, _ = published
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    assert build(["--catalog", str(root / "catalog.csv"), "--output", str(not_a_folder)]) == 2
    assert "exists and is not a folder" in one_line_error(capsys)


def test_a_field_larger_than_a_block_is_named_not_a_parser_riddle(tmp_path, capsys):
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("item_id,image_uri,title\nsku-1,a.jpg," + "x" * (20 << 20) + "\n")
    assert build(["--catalog", str(catalog), "--output", str(tmp_path / "out")]) == 2
    err = one_line_error(capsys)
    assert "a row longer than the reader's 16 MiB block" in err and "straddl" not in err


def test_a_manifest_without_a_key_names_it(published, tmp_path, capsys):
    _, output = published
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    path = os.path.join(version_dir(str(copy), "v1"), "manifest.json")
    manifest = json.load(open(path))
    del manifest["index"]
    json.dump(manifest, open(path, "w"))
    assert query(["--index", str(copy), "--item-id", "coffee"]) == 1
    assert "has no 'index'" in one_line_error(capsys)


def _retry_error():
    from google.api_core.exceptions import RetryError

    return RetryError("Timeout of 120.0s exceeded", cause=None)


@pytest.mark.parametrize("make_error, retryable", [
    (lambda: ConnectionError("reset by peer"), True),
    (lambda: TimeoutError("read timed out"), True),
    (lambda: __import__("google.api_core.exceptions", fromlist=["x"]).ServiceUnavailable("503"),
     True),
    (lambda: __import__("google.api_core.exceptions", fromlist=["x"]).TooManyRequests("429"),
     True),
    (_retry_error, True),
    (lambda: FileNotFoundError("no such object"), False),
    (lambda: __import__("catalog_index.storage", fromlist=["x"]).ImageFileError("too big"), False),
    (lambda: ValueError("not an image"), False),
])
def test_storage_failures_are_marked_retryable_in_errors(make_error, retryable):
    from transforms.errors import dead_letter

    row = dead_letter({"item_id": "x", "image_uri": "gs://b/x.jpg"}, "fetch", make_error()).value
    assert row["retryable"] is retryable


def _first_file(folder, suffix):
    for parent, _dirs, files in os.walk(folder):
        for name in files:
            if name.endswith(suffix):
                return os.path.join(parent, name)
    return None


# Where a `--replace` build is killed: (when it is reached, seconds after that). While its
# stages run (3 s after it started logging), once it has begun writing shard files, and
# once its manifest is written (the last file before LATEST).
KILL_POINTS = {
    "running": (lambda log, version: os.path.exists(log), 3.0),
    "writing shards": (lambda log, version: _first_file(version, ".ann") is not None, 0),
    "manifest written": (
        lambda log, version: os.path.exists(os.path.join(version, "manifest.json")), 0),
}


def test_replace_killed_at_any_point_leaves_latest_valid_and_queryable(published, tmp_path):
    from search import PublishedIndex

    _, output = published
    root = str(tmp_path / "root")
    shutil.copytree(output, root)
    catalog = tmp_path / "catalog.csv"
    with open(catalog, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["item_id", "image_uri", "title"])
        for item_id, name in [(name, name) for name in PHOTOS] + [("coffee-2", "coffee")]:
            writer.writerow([item_id, os.path.join(os.path.dirname(output), "img",
                                                   f"{name}.jpg"), f"A {name}"])
    command = [sys.executable, "-m", "pipelines.cli", "build", "--catalog", str(catalog),
               "--output", root, "--num-shards", "3",
               "--max-image-bytes", "1000000"]  # as v1 was built: its work can be reused
    argv = command + ["--version-id", "v2", "--replace"]
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": os.getcwd()}
    log = os.path.join(str(tmp_path), "catalog-index", "build-v2.log")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    version = version_dir(root, "v2")
    killed_at = {}
    for point, (reached, then) in KILL_POINTS.items():
        if os.path.exists(log):
            os.remove(log)
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        while process.poll() is None and not reached(log, version):
            time.sleep(0.005)
        time.sleep(then)
        process.send_signal(signal.SIGKILL)
        killed_at[point] = process.wait() == -signal.SIGKILL
        published_now = open(os.path.join(root, "LATEST")).read().strip()
        index = PublishedIndex.open(root, cache_dir=str(tmp_path / "cache"))
        assert index.version_id == published_now
        assert index.query_vector(index.vector("coffee"), k=1)[0].item_id == "coffee"
    assert all(killed_at.values()), killed_at  # each build was killed before it finished
    # The last kill may have come after LATEST was written: v2 is then the published one.
    final = subprocess.run(command + ["--version-id", "v3"], env=env, capture_output=True,
                           text=True)
    assert final.returncode == 0, final.stderr[-2000:]
    assert open(os.path.join(root, "LATEST")).read().strip() == "v3"
    assert len(PublishedIndex.open(root, cache_dir=str(tmp_path / "cache"))) == len(PHOTOS) + 1
    # and it reused the published version's work: every image is unchanged since
    counts = json.load(open(os.path.join(version, "..", "v3", "manifest.json")))["counts"]
    assert (counts["reused"], counts["embedded"]) == (len(PHOTOS) + 1, 0)


def test_a_publisher_killed_holding_the_lock_blocks_no_later_build(tmp_path):
    """A build killed while it held LATEST's lock (between taking it and writing LATEST)
    leaves the lock file, but not the lock: the next build publishes at once."""
    latest = str(tmp_path / "LATEST")
    storage.write_text(latest, "v1\n")
    _, token = storage.read_latest(latest)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from catalog_index import storage; "
         "storage._acquire_lock(sys.argv[1]); print('held', flush=True); time.sleep(600)",
         latest + ".lock"], stdout=subprocess.PIPE, text=True, env={
             **os.environ, "PYTHONPATH": os.getcwd()})
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert os.path.exists(latest + ".lock")  # left behind, unlocked
    storage.replace_latest(latest, "v2\n", token)
    assert storage.read_text(latest) == "v2\n"
