"""gs:// end to end against a real GCS emulator process (fake-gcs-server on loopback)."""

from __future__ import annotations

import csv
import http.server
import io
import json
import os
import subprocess
import sys
import threading

import pyarrow.parquet as pq
import pytest

from catalog_index import storage
from pipelines.build_index import run
from search import PublishedIndex
from tests.real_images import encode

PHOTOS = ("coffee", "chelsea", "rocket", "camera", "astronaut", "china")


def upload_catalog(bucket: str, photos, extra_rows=()) -> str:
    """Real photos as gs:// objects plus a CSV catalog naming them; returns its URI."""
    rows = []
    for name in PHOTOS:
        uri = f"gs://{bucket}/images/{name}.jpg"
        storage.write_bytes(uri, encode(photos[name]))
        rows.append([f"sku-{name}", uri, name.title()])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["item_id", "image_uri", "title"])
    writer.writerows(rows + list(extra_rows))
    catalog = f"gs://{bucket}/catalog.csv"
    storage.write_text(catalog, buffer.getvalue())
    return catalog


def latest(root: str) -> str:
    return (storage.read_optional_text(f"{root}/LATEST") or "").strip()


def test_gs_catalog_to_gs_index_and_back(gcs_bucket, photos, model_cache, tmp_path):
    storage.write_bytes(f"gs://{gcs_bucket}/images/broken.jpg", b"\xff\xd8\xff\xe0 not really")
    catalog = upload_catalog(gcs_bucket, photos, extra_rows=[
        ["sku-missing", f"gs://{gcs_bucket}/images/nowhere.jpg", "Gone"],
        ["sku-broken", f"gs://{gcs_bucket}/images/broken.jpg", "Broken"]])
    root = f"gs://{gcs_bucket}/index"
    assert run(["--catalog", catalog, "--output", root, "--num-shards", "2",
                "--version-id", "v1", "--max-failure-rate", "0.3"]) == 0
    assert latest(root) == "v1"

    index = PublishedIndex.open(root, cache_dir=str(tmp_path / "cache"))
    assert index.version_id == "v1" and len(index) == len(PHOTOS)
    assert index.item("sku-coffee")["title"] == "Coffee"
    for name in PHOTOS:
        hits = index.query_vector(index.vector(f"sku-{name}"), k=3)
        assert hits[0].item_id == f"sku-{name}" and hits[0].score == pytest.approx(1.0, abs=1e-5)

    errors = pq.read_table(io.BytesIO(storage.read_bytes(
        f"{root}/versions/v1/errors/part-00000-of-00001.parquet"))).to_pylist()
    assert {(row["item_id"], row["stage"]) for row in errors} == {
        ("sku-missing", "fetch"), ("sku-broken", "decode")}
    assert "no such object" in next(r for r in errors if r["stage"] == "fetch")["message"]

    # A glob over gs:// works too, and a new version takes over LATEST.
    assert run(["--catalog", f"gs://{gcs_bucket}/images/*.jpg", "--output", root,
                "--num-shards", "2", "--version-id", "v2", "--max-failure-rate", "0.3"]) == 0
    assert latest(root) == "v2"
    assert len(PublishedIndex.open(root, cache_dir=str(tmp_path / "cache"))) == len(PHOTOS)


def test_failure_after_shards_are_written_keeps_latest_and_rerun_completes(
        gcs_bucket, photos, model_cache, monkeypatch):
    catalog = upload_catalog(gcs_bucket, photos)
    root = f"gs://{gcs_bucket}/index"
    assert run(["--catalog", catalog, "--output", root, "--num-shards", "3",
                "--version-id", "good"]) == 0

    from transforms import shard

    original = shard.BuildShard.build

    def crash_on_last_shard(self, number, records, num_shards, *model):
        if number == 2:
            raise RuntimeError("injected: worker lost while writing shard 2")
        return original(self, number, records, num_shards, *model)

    monkeypatch.setattr(shard.BuildShard, "build", crash_on_last_shard)
    assert run(["--catalog", catalog, "--output", root, "--num-shards", "3",
                "--version-id", "next"]) == 1
    written = storage.list_files(f"{root}/versions/next")
    assert any("/metadata/part-" in path for path in written)  # some shards were written
    assert not any(path.endswith("manifest.json") for path in written)
    assert latest(root) == "good"

    monkeypatch.setattr(shard.BuildShard, "build", original)
    assert run(["--catalog", catalog, "--output", root, "--num-shards", "3",
                "--version-id", "next"]) == 2  # the half-written version is not overwritten
    assert run(["--catalog", catalog, "--output", root, "--num-shards", "3",
                "--version-id", "next", "--replace"]) == 0
    assert latest(root) == "next"


def test_two_builds_racing_to_publish(gcs_bucket, photos, model_cache):
    catalog = upload_catalog(gcs_bucket, photos)
    root = f"gs://{gcs_bucket}/index"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    builds = {version: subprocess.Popen(
        [sys.executable, "-m", "pipelines.build_index", "--catalog", catalog, "--output", root,
         "--num-shards", "2", "--version-id", version],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for version in ("race-a", "race-b")}
    results = {version: (process.wait(timeout=300), process.stderr.read())
               for version, process in builds.items()}
    codes = sorted(code for code, _ in results.values())
    assert codes == [0, 1], results
    winner = next(version for version, (code, _) in results.items() if code == 0)
    loser_message = next(err for code, err in results.values() if code == 1)
    assert latest(root) == winner
    assert "LATEST changed since this build started" in loser_message
    assert "not published" in loser_message
    for version in builds:  # both versions are complete and intact
        manifest = json.loads(storage.read_text(f"{root}/versions/{version}/manifest.json"))
        assert manifest["validation"]["passed"] and manifest["counts"]["indexed"] == len(PHOTOS)


def test_missing_credentials_for_real_gcs_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    storage.gcs_client.cache_clear()
    try:
        assert run(["--catalog", str(tmp_path / "c.csv"), "--output", "gs://bucket/index"]) == 2
    finally:
        storage.gcs_client.cache_clear()
    err = capsys.readouterr().err.strip()
    assert "no Google Cloud credentials" in err and len(err.splitlines()) == 1


class _FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Answers like GCS's media download, after failing the first two tries."""
    requests = []

    def do_GET(self):
        if not self.path.startswith("/download/"):  # the client's bucket-metadata lookup
            self.send_response(404)
            self.end_headers()
            return
        _FlakyHandler.requests.append(self.path)
        if len(_FlakyHandler.requests) <= 2:
            self.send_response(503 if len(_FlakyHandler.requests) == 1 else 429)
            self.end_headers()
            return
        body = b"image bytes"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_beams_credential_cache_is_checked_before_it_is_set(monkeypatch):
    """runners/beam_gcs.py sets private attributes of Beam's gcsio; a Beam without them is
    refused in one line, not patched blindly."""
    from apache_beam.internal.gcp import auth

    from runners.beam_internals import IncompatibleBeam
    from runners.beam_gcs import use_anonymous_beam_credentials

    monkeypatch.delattr(auth._Credentials, "_credentials_init")
    with pytest.raises(IncompatibleBeam, match="_Credentials._credentials_init is gone"):
        use_anonymous_beam_credentials()
    monkeypatch.undo()
    monkeypatch.setattr("apache_beam.__version__", "2.78.0")
    with pytest.raises(IncompatibleBeam, match="this is Beam 2.78.0"):
        use_anonymous_beam_credentials()


def test_fetch_retries_429_and_5xx_with_backoff(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_port}")
    storage.gcs_client.cache_clear()
    _FlakyHandler.requests.clear()
    try:
        assert storage.read_bytes("gs://bucket/images/a.jpg") == b"image bytes"
    finally:
        server.shutdown()
        storage.gcs_client.cache_clear()
    assert len(_FlakyHandler.requests) == 3
    assert all("/b/bucket/o/images%2Fa.jpg" in path for path in _FlakyHandler.requests)
