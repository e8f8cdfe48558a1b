"""``catalog-index serve``: the HTTP API over a published index, following LATEST.

Unit tier: the follower on synthetic versions (written by the build's shard code), the
command line, and a two-worker server (SIGHUP, metrics of both workers). E2E: a real
build of Fashion-MNIST products served by a real server process: the bad-request table,
the swap test (two publications and a rollback under a querying client), and the search
page driven in a real headless Chromium.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import threading
import time
import zlib
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from benchmarks.scale import write_synthetic_version
from catalog_index import storage
from catalog_index.schema import LATEST_FILE, version_dir
from search import cache as reader_cache
from search.cache import version_cache_dir
from serve.follow import Follower, NotReady
from tests.serve_client import ServerProcess

SYNTHETIC_ITEMS = 600


# ------------------------------------------------------------------ synthetic versions

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("serve-synthetic") / "index")
    write_synthetic_version(root, SYNTHETIC_ITEMS, 16, per_shard=200, target_recall=0.0)
    return root


def add_version(root: str, version_id: str, source: str = "synthetic") -> str:
    """A copy of version ``source`` as ``version_id`` (its manifest says so)."""
    folder = version_dir(root, version_id)
    shutil.copytree(version_dir(root, source), folder)
    path = os.path.join(folder, "manifest.json")
    manifest = json.load(open(path))
    manifest["version_id"] = version_id
    json.dump(manifest, open(path, "w"))
    return folder


def publish(root: str, version_id: str) -> None:
    storage.write_text(os.path.join(root, LATEST_FILE), version_id + "\n")


@pytest.fixture
def versions_root(synthetic, tmp_path, monkeypatch) -> str:
    """A root with versions a and b (copies of the synthetic one); LATEST names a."""
    root = str(tmp_path / "root")
    shutil.copytree(synthetic, root)
    for version_id in ("a", "b"):
        add_version(root, version_id)
    publish(root, "a")
    monkeypatch.setattr(reader_cache, "RACY_NS", 0)  # files copied just now: trust them
    return root


def mapped_paths(pid="self") -> str:
    with open(f"/proc/{pid}/maps") as stream:
        return stream.read()


def test_a_swap_waits_for_the_requests_on_the_old_version(versions_root, tmp_path):
    cache = str(tmp_path / "cache")
    swaps = []
    follower = Follower(versions_root, poll_seconds=3600, cache_dir=cache,
                        on_swap=lambda old, new: swaps.append((old, new.version_id)))
    with pytest.raises(NotReady):
        follower.pin()
    follower.check()
    running = follower.pin()  # a request that started on a
    assert running.version_id == "a"
    publish(versions_root, "b")
    follower.check()
    assert follower.current.version_id == "b" and swaps == [(None, "a"), ("a", "b")]
    # the request on a goes on, on a: its files are still mapped
    hits = running.index.query_item("sku-0000001", k=5)
    assert len(hits) == 5 and not running.released.is_set()
    old_folder = version_dir(versions_root, "a")
    old_cache = version_cache_dir(old_folder, cache)
    assert old_folder + "/" in mapped_paths()
    with follower.pinned() as served:  # a new request gets b
        assert served.version_id == "b"
    running.release()  # the last request on a ends: a is closed, nothing of it is mapped
    assert running.released.is_set() and running.index.closed
    maps = mapped_paths()
    assert old_folder + "/" not in maps and old_cache + "/" not in maps
    assert version_dir(versions_root, "b") + "/" in maps


def test_a_version_that_fails_verification_is_refused_and_the_old_one_stays(versions_root,
                                                                           tmp_path):
    refusals = []
    follower = Follower(versions_root, poll_seconds=3600, cache_dir=str(tmp_path / "cache"),
                        on_refusal=refusals.append)
    follower.check()
    bad = add_version(versions_root, "c")
    shard = os.path.join(bad, "index", sorted(os.listdir(os.path.join(bad, "index")))[0])
    data = bytearray(open(shard, "rb").read())
    data[200] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    publish(versions_root, "c")
    assert follower.check() is None
    status = follower.status()
    assert status["ready"] and status["version"] == "a"
    assert status["refused"]["version"] == "c" and "sha256" in status["refused"]["reason"]
    assert len(refusals) == 1
    follower.check()  # the same refusal is not tried again before retry_seconds
    assert len(refusals) == 1 and follower.current.version_id == "a"
    publish(versions_root, "b")  # the publisher moves on: b is swapped in, c forgotten
    follower.check()
    assert follower.current.version_id == "b" and follower.status()["refused"] is None


def test_serve_flags_are_checked_in_one_line(tmp_path, capsys):
    from serve.cli import run

    for argv in ([], ["--index", str(tmp_path / "missing")],
                 ["--index", str(tmp_path), "--workers", "0"],
                 ["--index", str(tmp_path), "--port", "70000"],
                 ["--index", str(tmp_path), "--poll-seconds", "-1"],
                 ["--index", str(tmp_path), "--bogus"]):
        assert run(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("catalog-index serve: error: ") and len(err.splitlines()) == 1


def test_two_workers_reload_on_sighup_and_report_metrics_together(versions_root, tmp_path):
    """SIGHUP to the parent reaches every worker: each looks at LATEST at once (the poll is
    an hour away). /metrics answers for both workers, whichever is asked."""
    with ServerProcess(versions_root, str(tmp_path / "server.log"), "--poll-seconds", "3600",
                       "--cache-dir", str(tmp_path / "cache"), workers=2) as server:
        status, answer = server.client.json("GET", "/v1/search?text=dress&k=3")
        assert status == 200 and answer["version"] == "a" and len(answer["results"]) == 3
        publish(versions_root, "b")
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        seen = []
        while time.monotonic() < deadline:
            seen = [server.client.json("GET", "/v1/similar?item_id=sku-0000002&k=2")[1]
                    ["version"] for _ in range(20)]
            server.client.close()  # a new connection: any worker may take it
            if set(seen) == {"b"}:
                break
            time.sleep(0.2)
        assert set(seen) == {"b"}
        metrics = server.client.get("/metrics")[2].decode()
        pids = {line.split('pid="')[1].split('"')[0] for line in metrics.splitlines()
                if line.startswith("catalog_index_serve_ready{")}
        assert len(pids) == 2
        assert 'catalog_index_serve_swaps_total 2.0' in metrics  # one per worker
        assert "Traceback" not in server.log()


# ---------------------------------------------------- a real build of Fashion-MNIST items

FASHION_ITEMS = 300


@pytest.fixture(scope="module")
def fashion(tmp_path_factory, model_cache):
    """Version v1 of 300 Fashion-MNIST products (the demo's catalog, smaller), built by the
    pipeline, and the photo of an ankle boot that is not in the catalog."""
    from PIL import Image

    from pipelines.build_index import run
    from pipelines.demo import FASHION_CLASSES, FASHION_MNIST_DIR, load_fashion_mnist, \
        write_sample_catalog

    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.skip("needs the Debian package dataset-fashion-mnist (make sample-data)")
    folder = tmp_path_factory.mktemp("serve-fashion")
    catalog = write_sample_catalog(str(folder / "catalog"), FASHION_ITEMS)
    root = str(folder / "index")
    assert run(["--catalog", catalog, "--output", root, "--num-shards", "2",
                "--version-id", "v1"]) == 0
    images, labels = load_fashion_mnist()
    boot = next(n for n in range(FASHION_ITEMS, len(labels))
                if FASHION_CLASSES[labels[n]] == "Ankle boot")
    query = folder / "ankle-boot.png"
    Image.fromarray(images[boot]).save(query)
    return SimpleNamespace(root=root, catalog=catalog, folder=folder,
                           query_image=str(query), query_bytes=query.read_bytes())


def decompression_bomb(side: int = 20_000) -> bytes:
    """A real PNG of side x side black pixels (400 megapixels for 20,000): a few hundred KB
    that would decode to 400 MB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor, row = zlib.compressobj(9), b"\0" * (side + 1)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0,
                                                                0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def bad_requests(query_png: bytes):
    """(case, method, path, body or None, headers, expected status)."""
    form_image = "/v1/search/image"
    bomb = decompression_bomb()
    multipart = multipart_body
    json_header = {"content-type": "application/json"}
    cases = [
        ("body over the image limit", "POST", form_image,
         *multipart(b"\x89PNG" + b"\0" * 1_100_000), 413),
        ("body over the limit, chunked (no length)", "POST", form_image, "CHUNKED", {}, 413),
        ("a non-image", "POST", form_image, *multipart(b"item_id,title\nsku-1,boot\n"), 415),
        ("an empty file", "POST", form_image, *multipart(b""), 400),
        ("a truncated image", "POST", form_image, *multipart(query_png[:len(query_png) // 2]),
         400),
        ("a decompression bomb (20,000 x 20,000 PNG)", "POST", form_image, *multipart(bomb),
         413),
        ("no image in the form", "POST", form_image, *multipart(None), 422),
        ("k = 0", "GET", "/v1/search?text=boot&k=0", None, {}, 422),
        ("k = 1001", "GET", "/v1/similar?item_id=fmnist-00000&k=1001", None, {}, 422),
        ("k not a number", "GET", "/v1/search?text=boot&k=ten", None, {}, 422),
        ("k out of range in JSON", "POST", "/v1/search", b'{"text": "boot", "k": -1}',
         json_header, 422),
        ("k out of range in a form", "POST", form_image, *multipart(query_png, k="5000"), 422),
        ("text weight 1.5", "GET", "/v1/similar?item_id=fmnist-00000&text=boot"
         "&text_weight=1.5", None, {}, 422),
        ("an unknown item", "GET", "/v1/similar?item_id=sku-nope", None, {}, 404),
        ("an unknown item's metadata", "GET", "/v1/item?item_id=sku-nope", None, {}, 404),
        ("an unknown item in JSON", "POST", "/v1/search", b'{"item_id": "sku-nope"}',
         json_header, 404),
        ("malformed JSON", "POST", "/v1/search", b'{"text": "boot",', json_header, 400),
        ("JSON that is not an object", "POST", "/v1/search", b'["boot"]', json_header, 422),
        ("a field of the wrong type", "POST", "/v1/search", b'{"text": ["boot"]}',
         json_header, 422),
        ("an unknown field", "POST", "/v1/search", b'{"text": "boot", "sql": "drop"}',
         json_header, 422),
        ("nothing to search for", "POST", "/v1/search", b'{"k": 5}', json_header, 422),
        ("a vector of the wrong width", "POST", "/v1/search", b'{"vector": [0.5, 0.5]}',
         json_header, 422),
        ("a vector with NaN", "POST", "/v1/search",
         b'{"vector": [' + b"NaN, " * 264 + b"1.0]}", json_header, 422),
        ("a text without words", "GET", "/v1/search?text=the+of+and", None, {}, 422),
        ("a text of 5,000 characters", "GET", "/v1/search?text=" + "boot+" * 1000, None,
         {}, 422),
        ("no text", "GET", "/v1/search", None, {}, 422),
        ("a wrong method", "DELETE", "/v1/search?text=boot", None, {}, 405),
        ("an unknown route", "GET", "/v1/nothing-here", None, {}, 404),
        ("a path out of the API", "GET", "/v1/../../etc/passwd", None, {}, 404),
    ]
    for path_like in ("../../etc/passwd", "/etc/passwd", "../versions/v1/manifest.json",
                      "..\\..\\windows\\win.ini", "fmnist-00000/../fmnist-00001",
                      "fmnist-00000\x00.png", "gs://bucket/index/LATEST"):
        quoted = quote(path_like, safe="")
        cases += [(f"an id like a path: {path_like!r}", "GET",
                   f"/v1/similar?item_id={quoted}", None, {}, 404),
                  (f"an id like a path: {path_like!r} (thumbnail)", "GET",
                   f"/v1/thumbnail?item_id={quoted}", None, {}, 404)]
    return cases


def multipart_body(image, **fields):
    from tests.serve_client import multipart

    if image is None:
        boundary = "x" * 16
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n5\r\n'
                f"--{boundary}--\r\n").encode()
        return body, {"content-type": f"multipart/form-data; boundary={boundary}"}
    body, content_type = multipart(image, "upload.png", fields)
    return body, {"content-type": content_type}


def send_chunked(port: int, path: str, total: int) -> tuple:
    """A multipart upload of ``total`` bytes without Content-Length (chunked)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
        for _ in range(total // 65536):
            yield b"\0" * 65536

    try:
        connection.request("POST", path, body=chunks(), encode_chunked=True,
                           headers={"content-type": "multipart/form-data; boundary=b"})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    except (BrokenPipeError, ConnectionResetError):  # the server closed first: ask again
        return None, {}, b""
    finally:
        connection.close()


def slow_body(port: int) -> tuple:
    """Headers saying 1,000 bytes, then 10 bytes, then nothing."""
    import socket as sockets

    with sockets.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 1000\r\n\r\n{\"text\": ")
        data = b""
        while True:  # the answer, until the server closes the connection
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_bad_requests_get_a_4xx_json_error_and_no_traceback(fashion, tmp_path):
    with ServerProcess(fashion.root, str(tmp_path / "server.log"), "--max-image-bytes",
                       "1000000", "--request-timeout", "3",
                       "--cache-dir", str(tmp_path / "cache")) as server:
        table = []
        for case, method, path, body, headers, expected in bad_requests(fashion.query_bytes):
            if body == "CHUNKED":
                status, found, data = send_chunked(server.port, path, 2_000_000)
            else:
                server.client.close()
                status, found, data = server.client.request(method, path, body, headers)
            answer = json.loads(data)
            table.append((case, status))
            assert status == expected, (case, status, answer)
            assert set(answer) == {"detail", "version"} and answer["version"] == "v1", case
            assert isinstance(answer["detail"], str) and "\n" not in answer["detail"], case
            assert found.get("x-index-version") == "v1", case
        started = time.monotonic()
        status, body = slow_body(server.port)
        table.append(("a body that stops arriving (time limit 3 s)", status))
        assert status == 408 and json.loads(body)["version"] == "v1"
        assert time.monotonic() - started < 10
        # nothing stuck: it still answers, every kind of query
        server.client.close()
        assert server.client.json("GET", "/v1/search?text=boot&k=3")[0] == 200
        status, _, data = server.client.upload("/v1/search/image", fashion.query_bytes, k="3")
        assert status == 200 and len(json.loads(data)["results"]) == 3
        print("\n".join(f"{status}  {case}" for case, status in table))
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_swaps_under_load_fail_no_request(fashion, tmp_path):
    """A client queries in a loop while v2 and v3 are published and LATEST is rolled back
    to v2 (and v1 is pruned): no request fails, every answer names a published version,
    each client sees them in publication order, and the versions left are released."""
    from pipelines.build_index import run as build
    from pipelines.demo import write_sample_catalog
    from pipelines.prune import run as prune
    from pipelines.rollback import run as rollback

    root = str(tmp_path / "index")
    shutil.copytree(fashion.root, root)
    catalog_folder = str(tmp_path / "catalog")
    cache = str(tmp_path / "cache")
    server = ServerProcess(root, str(tmp_path / "server.log"), "--poll-seconds", "0.3",
                           "--cache-dir", cache)
    stop, answers, failures = threading.Event(), [], []

    def client(number: int):
        from tests.serve_client import Client

        http, seen = Client(server.port), []
        queries = [("GET", "/v1/similar?item_id=fmnist-00007&k=10", None),
                   ("GET", "/v1/search?text=ankle+boot&k=10", None),
                   ("POST", "/v1/search/image", fashion.query_bytes)]
        n = number
        while not stop.is_set():
            method, path, image = queries[n % len(queries)]
            n += 1
            try:
                if image is None:
                    status, headers, data = http.request(method, path)
                else:
                    status, headers, data = http.upload(path, image, k="10")
                version = json.loads(data).get("version")
                if status != 200 or headers.get("x-index-version") != version:
                    failures.append((path, status, data[:200]))
                seen.append(version)
            except Exception as error:  # noqa: BLE001 - a failed request is what we count
                failures.append((path, repr(error)))
        answers.append(seen)
        http.close()

    def serving(version_id: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while server.client.json("GET", "/readyz")[1]["version"] != version_id:
            assert time.monotonic() < deadline, server.log()[-2000:]
            time.sleep(0.1)
        time.sleep(0.5)  # queries on the new version

    threads = [threading.Thread(target=client, args=(n,)) for n in range(3)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1)
        for version_id, items in (("v2", FASHION_ITEMS + 20), ("v3", FASHION_ITEMS + 40)):
            catalog = write_sample_catalog(catalog_folder, items)
            assert build(["--catalog", catalog, "--output", root, "--num-shards", "2",
                          "--version-id", version_id]) == 0
            serving(version_id)
        assert rollback(["--index", root, "--version", "v2"]) == 0
        serving("v2")
        assert prune(["--index", root, "--keep", "1"]) == 0  # v1 goes, under the server
        assert not os.path.exists(version_dir(root, "v1"))
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        maps = mapped_paths(server.pid)
        metrics = server.client.get("/metrics")[2].decode()
        server.stop()
    print(f"swap test: {sum(len(seen) for seen in answers)} requests by {len(answers)} "
          f"clients, {len(failures)} failed; swap durations: " + ", ".join(
              line.split("catalog_index_serve_swap_duration_seconds_")[1]
              for line in metrics.splitlines()
              if line.startswith("catalog_index_serve_swap_duration_seconds_s")
              or line.startswith("catalog_index_serve_swap_duration_seconds_c")))
    assert failures == []
    assert sum(len(seen) for seen in answers) > 50
    for seen in answers:
        assert set(seen) <= {"v1", "v2", "v3"}
        changes = [version for n, version in enumerate(seen) if n == 0 or seen[n - 1] != version]
        assert changes == ["v1", "v2", "v3", "v2"], changes
    for version_id in ("v1", "v3"):  # released: nothing of theirs is mapped any more
        folder = version_dir(root, version_id)
        assert folder + "/" not in maps and version_cache_dir(folder, cache) + "/" not in maps
    assert version_dir(root, "v2") + "/" in maps
    assert "catalog_index_serve_swaps_total 3.0" in metrics
    assert "catalog_index_serve_failed_swaps_total 0.0" in metrics
    assert "Traceback" not in server.log()


# ---------------------------------------------------------------- the page, in Chromium

def categories(browser) -> list:
    return browser.evaluate("Array.from(document.querySelectorAll('#results figure'))"
                            ".map(f => f.dataset.category)")


def test_the_search_page_finds_ankle_boots_in_chromium(fashion, tmp_path):
    from tests.browser import CHROMIUM, Browser

    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (make browser)")
    with ServerProcess(fashion.root, str(tmp_path / "server.log"),
                       "--cache-dir", str(tmp_path / "cache")) as server, Browser() as browser:
        browser.open(f"http://127.0.0.1:{server.port}/", "document.body.dataset.ready == '1'")
        assert browser.evaluate("document.getElementById('version').textContent") == "v1"
        # by text: typed, then Enter
        browser.type_into("#text", "ankle boot")
        browser.press("Enter")
        browser.wait_for("document.body.dataset.answered == '1'")
        found = categories(browser)
        assert len(found) == 24 and found.count("Ankle boot") == 24, found
        status = browser.evaluate("document.getElementById('status').textContent")
        assert "answered by version v1" in status
        # by an uploaded image (a boot that is not in the catalog), the words cleared
        browser.evaluate("document.getElementById('text').value = ''")
        browser.choose_file("#file", fashion.query_image)
        browser.wait_for("document.body.dataset.answered == '2'")
        assert browser.evaluate("document.body.dataset.query") == "image"
        found = categories(browser)
        assert found.count("Ankle boot") >= 0.7 * len(found), found
        # more like this, clicked on the second result
        second = browser.evaluate("document.querySelector('#results figure:nth-child(2)')"
                                  ".dataset.itemId")
        browser.click("#results figure:nth-child(2) button.more")
        browser.wait_for("document.body.dataset.answered == '3'")
        assert browser.evaluate("document.body.dataset.query") == "item"
        found = categories(browser)
        ids = browser.evaluate("Array.from(document.querySelectorAll('#results figure'))"
                               ".map(f => f.dataset.itemId)")
        assert second not in ids and found.count("Ankle boot") >= 0.7 * len(found), found
        # every thumbnail loaded, from the server
        browser.wait_for("Array.from(document.querySelectorAll('#results img'))"
                         ".every(i => i.complete && i.naturalWidth > 0)")
        assert browser.evaluate("document.body.dataset.failed") is None
        browser.screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 10_000
    assert "Traceback" not in server.log()
