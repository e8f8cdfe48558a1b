"""The nightly build on a real distributed engine: Dask, a scheduler and two worker
processes on loopback. Same catalog, same version id: the same files as the local build,
the same counts, the same manifest but for timestamps and timings, and the CLI waits and
exits with the job's outcome."""

from __future__ import annotations

import hashlib
import json
import os

import pyarrow.parquet as pq
import pytest

from catalog_index.schema import version_dir
from pipelines.build_index import run
from tests.real_images import decode_edge_cases, encode, write_files

pytest.importorskip("distributed")

TOLERATE_FAILURES = ["--max-failure-rate", "1"]
# Fields of a manifest that say when and how long.
RUN_FIELDS = ("created_at", "timings")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, photos):
    """Real photos and every awkward kind of file, good and bad, as a CSV with one missing
    image."""
    root = tmp_path_factory.mktemp("catalog")
    files = {f"photos/{name}.jpg": encode(photo) for name, photo in photos.items()}
    files.update({f"odd/{name}": data for name, (data, _) in decode_edge_cases(photos).items()})
    write_files(str(root / "images"), files)
    rows = [(os.path.splitext(name)[0].replace("/", "-"), str(root / "images" / name))
            for name in sorted(files)] + [("missing", str(root / "images" / "missing.jpg"))]
    path = root / "catalog.csv"
    path.write_text("item_id,image_uri\n" + "".join(f"{i},{u}\n" for i, u in rows))
    return str(path), len(rows)


def build(catalog_path, output, *extra):
    return run(["--catalog", catalog_path, "--output", output, "--num-shards", "3",
                "--version-id", "v1", *TOLERATE_FAILURES, *extra])


def digests(root, folder):
    path = os.path.join(version_dir(root, "v1"), folder)
    return {name: hashlib.sha256(open(os.path.join(path, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(path))}


def manifest(root):
    return json.load(open(os.path.join(version_dir(root, "v1"), "manifest.json")))


def error_rows(root):
    folder = os.path.join(version_dir(root, "v1"), "errors")
    rows = [row for name in sorted(os.listdir(folder))
            for row in pq.read_table(os.path.join(folder, name)).to_pylist()]
    return sorted(rows, key=lambda row: json.dumps(row, sort_keys=True, default=str))


def test_a_build_on_dask_publishes_the_local_builds_files(catalog, dask_cluster, tmp_path,
                                                         model_cache, capsys):
    catalog_path, rows = catalog
    local, dask = str(tmp_path / "local"), str(tmp_path / "dask")
    assert build(catalog_path, local) == 0
    capsys.readouterr()
    assert build(catalog_path, dask, "--runner", "DaskRunner",
                 f"--dask_client_address={dask_cluster.address}") == 0
    assert "published:" in capsys.readouterr().out
    assert open(os.path.join(dask, "LATEST")).read().strip() == "v1"
    for folder in ("index", "metadata", "embeddings", "changes"):
        assert digests(dask, folder) == digests(local, folder), folder
        assert len(digests(dask, folder)) == 3
    assert error_rows(dask) == error_rows(local)
    on_dask, here = manifest(dask), manifest(local)
    assert on_dask["counts"] == here["counts"]
    assert on_dask["counts"]["input"] == rows and on_dask["counts"]["failed"] >= 5
    assert on_dask["model"]["runtime"] == "tflite"  # what the workers ran, as here
    # the two builds went to two output roots: the one option that differs
    assert (on_dask["pipeline_options"].pop("output"), here["pipeline_options"].pop("output")) \
        == (dask, local)
    assert {key: value for key, value in on_dask.items() if key not in RUN_FIELDS} == \
        {key: value for key, value in here.items() if key not in RUN_FIELDS}


def test_a_failed_quality_gate_on_dask_exits_1_and_publishes_nothing(
        catalog, dask_cluster, tmp_path, model_cache, capsys):
    catalog_path, _ = catalog
    output = str(tmp_path / "gated")
    code = run(["--catalog", catalog_path, "--output", output, "--version-id", "v1",
                "--max-failure-rate", "0", "--runner", "DaskRunner",
                f"--dask_client_address={dask_cluster.address}"])
    err = capsys.readouterr().err
    assert code == 1
    line = next(line for line in err.splitlines() if "not published" in line)
    assert "QualityGateFailed" in line and "of the input failed" in line
    assert not os.path.exists(os.path.join(output, "LATEST"))


@pytest.mark.parametrize("where", ["local", "dask"])
def test_a_crash_on_the_workers_exits_1_in_one_line_and_publishes_nothing(
        where, photos, dask_cluster, tmp_path, model_cache, capsys):
    """Not an item's failure: the version folder cannot be written (a file stands where
    the versions folder goes), which only the workers find out."""
    write_files(str(tmp_path / "images"), {f"{name}.jpg": encode(photos[name])
                                           for name in ("coffee", "chelsea", "rocket")})
    catalog_path = str(tmp_path / "images" / "*.jpg")
    output = tmp_path / "out"
    output.mkdir()
    (output / "versions").write_text("not a folder\n")
    runner = [] if where == "local" else [
        "--runner", "DaskRunner", f"--dask_client_address={dask_cluster.address}"]
    code = run(["--catalog", catalog_path, "--output", str(output), "--version-id", "v1",
                *TOLERATE_FAILURES, *runner])
    lines = [line for line in capsys.readouterr().err.splitlines() if "not published" in line]
    assert code == 1 and len(lines) == 1
    assert "NotADirectoryError" in lines[0] or "Not a directory" in lines[0], lines[0]
    assert not (output / "LATEST").exists()


def test_no_wait_is_refused_on_dask_where_the_job_dies_with_its_client(tmp_path, capsys):
    code = run(["--catalog", str(tmp_path / "*.jpg"), "--output", str(tmp_path / "out"),
                "--runner", "DaskRunner", "--dask_client_address=tcp://127.0.0.1:1",
                "--no-wait"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--no-wait: a job on DaskRunner is cancelled when the client" in err[0]


def test_an_unknown_runner_and_its_flags_are_one_line_errors(tmp_path, capsys):
    common = ["--catalog", str(tmp_path / "*.jpg"), "--output", str(tmp_path / "out")]
    assert run(common + ["--runner", "NoSuchRunner"]) == 2
    assert "--runner NoSuchRunner: no such runner" in capsys.readouterr().err
    assert run(common + ["--runner", "DaskRunner", "--dask_no_such_flag=1"]) == 2
    assert "unrecognized arguments: --dask_no_such_flag=1" in capsys.readouterr().err
