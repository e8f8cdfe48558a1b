"""The same build on the local runner and on Dask (a scheduler and two worker processes on
this machine), in one run: wall time of each, and where each spends it.

    .venv/bin/python -m benchmarks.distributed [--items 2000] [--work DIR]

The catalog: ``--items`` 800x800 product JPEGs (benchmarks/incremental.py's), one missing
file and one truncated JPEG, as a CSV; ``--num-shards 2``. Each build is a fresh
``catalog-index build`` process with the same version id:

- local: the default local runner (FnApiRunner, one worker thread per core);
- Dask, cold: the first build on a fresh cluster (the worker processes import TensorFlow
  and load the model);
- Dask, warm: the same build again on the same workers.

Per-stage times: on Dask, the scheduler's task stream (every task's compute time, summed by
Beam step: runners/dask.py names a step's tasks after its label); locally, the FnApiRunner's
fused stages, timed around each bundle (a wrapper process). The artifacts of the three
builds are compared by sha256.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

PYTHON = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARDS = "2"

# Run by the local build's process: the FnApiRunner's stages, timed around each bundle.
LOCAL_STAGE_TIMER = r"""
import sys, time, json
from apache_beam.runners.portability.fn_api_runner import fn_runner
stages = {}
beam_execute = fn_runner.FnApiRunner._execute_bundle
def timed(self, context, manager, bundle_input):
    started = time.perf_counter()
    try:
        return beam_execute(self, context, manager, bundle_input)
    finally:
        name = manager.stage.name
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - started
fn_runner.FnApiRunner._execute_bundle = timed
from pipelines.build_index import run
code = run(sys.argv[2:])
with open(sys.argv[1], "w") as stream:
    json.dump(stages, stream)
sys.exit(code)
"""


def write_catalog(work: str, items: int) -> str:
    from benchmarks.incremental import product_jpeg, row, write_csv, write_images

    images = os.path.join(work, "images")
    os.makedirs(images, exist_ok=True)
    path = lambda n: os.path.join(images, f"item-{n:06d}.jpg")  # noqa: E731
    write_images([(path(n), n, 0) for n in range(items) if not os.path.exists(path(n))])
    with open(os.path.join(images, "truncated.jpg"), "wb") as stream:
        stream.write(product_jpeg(items)[:2000])
    rows = [row(n, path(n)) for n in range(items)]
    rows.append(["truncated", os.path.join(images, "truncated.jpg"), "truncated", "Shirt"])
    rows.append(["missing", os.path.join(images, "missing.jpg"), "missing", "Shirt"])
    return write_csv(os.path.join(work, "catalog.csv"), rows)


def build(catalog: str, output: str, *extra: str, stage_file: str = None) -> float:
    command = [PYTHON, "-m", "pipelines.cli", "build"] if stage_file is None else \
        [PYTHON, "-c", LOCAL_STAGE_TIMER, stage_file]
    started = time.perf_counter()
    done = subprocess.run(command + ["--catalog", catalog, "--output", output,
                                     "--version-id", "v1", "--num-shards", SHARDS, *extra],
                          capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"build failed ({output}): {done.stderr.strip()[-800:]}")
    return wall


def digests(output: str) -> dict:
    folder = os.path.join(output, "versions", "v1")
    found = {}
    for sub in ("index", "metadata", "embeddings"):
        for name in sorted(os.listdir(os.path.join(folder, sub))):
            with open(os.path.join(folder, sub, name), "rb") as stream:
                found[f"{sub}/{name}"] = hashlib.sha256(stream.read()).hexdigest()
    return found


def dask_stages(address: str, since: float) -> dict:
    """Compute seconds per Beam step from the scheduler's task stream since ``since``."""
    from distributed import Client
    from distributed.utils import key_split

    seconds = collections.Counter()
    with Client(address) as client:
        for task in client.get_task_stream(start=since):
            for part in task.get("startstops", ()):
                if part["action"] == "compute":
                    seconds[key_split(task["key"])] += part["stop"] - part["start"]
    return dict(seconds)


def local_stage_names(stages: dict) -> dict:
    """A fused stage's name lists its transforms; keep the build's own step names."""
    named = collections.Counter()
    for name, seconds in stages.items():
        steps = [part.split("/")[0].split("-")[0] for part in
                 name.replace("ref_AppliedPTransform_", "").replace("(", " ").replace(")", " ")
                 .replace("+", " ").split()]
        steps = [step for step in steps if step and not step.startswith("ref_")]
        named["+".join(dict.fromkeys(steps)) or name] += seconds
    return dict(named)


def print_stages(title: str, stages: dict, top: int = 8) -> None:
    total = sum(stages.values())
    print(f"  {title}: {total:.1f} s of stage time")
    for name, seconds in sorted(stages.items(), key=lambda item: -item[1])[:top]:
        print(f"    {seconds:7.1f} s  {name[:100]}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--work", default=None)
    args = parser.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="distributed-")
    sys.path.insert(0, ROOT)
    from tests.dask_cluster import DaskCluster

    cluster = None
    try:
        catalog = write_catalog(work, args.items)
        for name in ("local", "dask-cold", "dask-warm"):
            shutil.rmtree(os.path.join(work, name), ignore_errors=True)
        stage_file = os.path.join(work, "local-stages.json")
        local = build(catalog, os.path.join(work, "local"), stage_file=stage_file)
        cluster = DaskCluster(workers=2)
        dask_stages(cluster.address, time.time())  # the scheduler records tasks from now on
        dask = ["--runner", "DaskRunner", f"--dask_client_address={cluster.address}"]
        started = time.time()
        cold = build(catalog, os.path.join(work, "dask-cold"), *dask)
        cold_stages = dask_stages(cluster.address, started)
        started = time.time()
        warm = build(catalog, os.path.join(work, "dask-warm"), *dask)
        warm_stages = dask_stages(cluster.address, started)
        same = digests(os.path.join(work, "local")) == digests(os.path.join(work, "dask-cold")) \
            == digests(os.path.join(work, "dask-warm"))
        print(f"{args.items + 2:,} catalog rows ({args.items:,} 800x800 JPEGs, 1 truncated, "
              f"1 missing), {SHARDS} shards, {os.cpu_count()} cores")
        print(f"local (FnApiRunner, threads):  {local:6.1f} s wall")
        print(f"Dask, 2 workers, cold:         {cold:6.1f} s wall ({cold / local:.2f} of local)")
        print(f"Dask, 2 workers, warm:         {warm:6.1f} s wall ({warm / local:.2f} of local)")
        print(f"index, metadata and embeddings files identical in all three: {same}")
        import json

        print_stages("local, by fused stage", local_stage_names(json.load(open(stage_file))))
        print_stages("Dask cold, by step (task compute time, both workers)", cold_stages)
        print_stages("Dask warm, by step", warm_stages)
    finally:
        if cluster is not None:
            cluster.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
