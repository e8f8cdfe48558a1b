"""gs:// builds through a fault-injecting proxy (tests/fault_proxy.py) in front of the GCS
emulator: storage that answers 503 and 429, drops connections and cuts responses must
change no byte of what is published, and storage that refuses LATEST for good must end in
one line that says how to publish the finished version."""

from __future__ import annotations


import pytest

from catalog_index import storage
from pipelines.build_index import run as build
from pipelines.rollback import run as rollback
from tests.fault_proxy import READS, WRITES, FaultProxy, Rule
from tests.test_gcs import PHOTOS, latest, upload_catalog


@pytest.fixture
def through(gcs_emulator, monkeypatch):
    """``through(rules)``: from then on, every GCS request of this process goes through a
    fault-injecting proxy with those rules."""
    proxies = []

    def start(rules, seed=0):
        proxy = FaultProxy(gcs_emulator.url, rules, seed)
        proxies.append(proxy)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        storage.gcs_client.cache_clear()
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()
    storage.gcs_client.cache_clear()


def artifacts(root: str, version: str) -> dict:
    """Every file of a version but those that carry its id and timings (manifest, report),
    by name: its bytes."""
    prefix = f"{root}/versions/{version}/"
    return {path[len(prefix):]: storage.read_bytes(path)
            for path in storage.list_files(prefix)
            if not path.endswith(("manifest.json", "report.html", "report.json"))
            and "/changes/" not in path}


def test_faults_on_every_fifth_request_change_no_byte(gcs_bucket, photos, model_cache,
                                                      through):
    catalog = upload_catalog(gcs_bucket, photos, extra_rows=[
        ["sku-missing", f"gs://{gcs_bucket}/images/nowhere.jpg", "Gone"]])
    root = f"gs://{gcs_bucket}/index"
    argv = ["--catalog", catalog, "--output", root, "--num-shards", "2",
            "--max-failure-rate", "0.3"]
    assert build(argv + ["--version-id", "clean"]) == 0
    proxy = through([Rule("503", 0.05), Rule("429", 0.05), Rule("reset", 0.05),
                     Rule("cut", 0.05, methods=READS), Rule("503", 0.3, methods=WRITES)])
    assert build(argv + ["--version-id", "faulty"]) == 0
    assert latest(root) == "faulty"
    assert sum(proxy.injected.values()) >= 10, proxy.injected  # the faults did happen
    clean, faulty = artifacts(root, "clean"), artifacts(root, "faulty")
    assert sorted(faulty) == sorted(clean) and faulty == clean
    assert any(name.startswith("errors/") for name in faulty)  # sku-missing, and only it


def test_a_latest_that_storage_keeps_refusing_ends_in_one_line(gcs_bucket, photos, model_cache,
                                                               through, monkeypatch, capsys):
    catalog = upload_catalog(gcs_bucket, photos)
    root = f"gs://{gcs_bucket}/index"
    assert build(["--catalog", catalog, "--output", root, "--num-shards", "2",
                  "--version-id", "v1"]) == 0
    monkeypatch.setattr(storage, "RETRY_SECONDS", 3.0)  # the client's backoff, shortened
    proxy = through([Rule("503", 1.0, methods=WRITES, match=b"LATEST")])
    capsys.readouterr()
    assert build(["--catalog", catalog, "--output", root, "--num-shards", "2",
                  "--version-id", "v2"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "version v2 is complete and validated" in err and f"{root}/LATEST" in err
    assert f"catalog-index rollback --index {root} --version v2" in err
    assert proxy.injected["503"] >= 2  # retried, then given up
    assert latest(root) == "v1"

    through([])  # storage is back: the printed command publishes the finished version
    assert rollback(["--index", root, "--version", "v2"]) == 0
    assert latest(root) == "v2"
    manifest = storage.read_text(f"{root}/versions/v2/manifest.json")
    assert f'"indexed": {len(PHOTOS)}' in manifest


def requests_for(proxy: FaultProxy, name: str, log=None) -> list:
    """The methods of the requests whose path names ``name`` (URL-quoted as GCS does)."""
    quoted = name.replace("/", "%2F")
    return [entry[1] for entry in (proxy.log if log is None else log)
            if quoted in entry[2] or name in entry[2]]


def test_a_read_that_gets_no_answer_is_answered_by_its_hedged_copy(gcs_bucket, through):
    uri = f"gs://{gcs_bucket}/slow/object.bin"
    storage.write_bytes(uri, b"the bytes")
    proxy = through([Rule("delay", 1.0, match=b"object.bin", seconds=60, times=1)])
    assert storage.read_bytes(uri) == b"the bytes"
    assert requests_for(proxy, "object.bin") == ["GET", "GET"]  # the held one, and its copy
    # read_bytes returned with the first copy still held: it did not wait for that answer
    answered = [(0, method, path) for method, path in proxy.answered]
    assert requests_for(proxy, "object.bin", answered) == ["GET"]


def test_a_quick_read_is_sent_once(gcs_bucket, through):
    uri = f"gs://{gcs_bucket}/quick.bin"
    storage.write_bytes(uri, b"quick")
    proxy = through([])
    assert storage.read_bytes(uri) == b"quick"
    assert requests_for(proxy, "quick.bin") == ["GET"]


def test_an_upload_over_the_hedging_limit_is_never_sent_twice(gcs_bucket, through):
    uri = f"gs://{gcs_bucket}/large.bin"
    data = bytes(range(256)) * (storage.HEDGE_MAX_UPLOAD_BYTES // 256 + 1)
    proxy = through([Rule("delay", 1.0, methods=WRITES, seconds=2, times=1)])
    storage.write_bytes(uri, data)
    assert [method for _, method, _, _ in proxy.log if method == "POST"] == ["POST"]
    assert storage.read_bytes(uri) == data


def test_a_latest_write_whose_answer_is_late_is_published_once(gcs_bucket, through):
    """The write lands at once but its answer is held: the hedged copy is refused (412,
    LATEST's generation moved), and the content it finds there is its own: published."""
    path = f"gs://{gcs_bucket}/index/LATEST"
    storage.write_text(path, "v1\n")
    _, token = storage.read_latest(path)
    proxy = through([Rule("slow", 1.0, methods=WRITES, match=b"LATEST", seconds=60, times=1)])
    storage.replace_latest(path, "v2\n", token)
    assert storage.read_text(path) == "v2\n"
    assert [method for _, method, _, _ in proxy.log if method == "POST"] == ["POST", "POST"]
    # and a writer still holding v1's token loses, as before
    with pytest.raises(storage.PublishConflict):
        storage.replace_latest(path, "v3\n", token)
