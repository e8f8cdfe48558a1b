"""Fetch throughput from GCS: the pipeline's FetchImages against a naive read, in one run.

    .venv/bin/python -m benchmarks.gcs_fetch [--images 2000]

Starts a real GCS emulator (fake-gcs-server) on loopback, uploads N small real JPEGs
(256x256, about 15 KB each), then reads them all back:

- pipeline: Beam's DirectRunner running the build's ``FetchImages`` transform (batches,
  a thread pool per worker, one storage client per process);
- naive: one new ``storage.Client`` per file, one file after the other.

The emulator shares the machine's cores with the reader, and answers in well under a
millisecond where real GCS takes tens: ``--latency-ms`` puts a small proxy in front of
the emulator that holds every request that long, as a network would.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
import numpy as np
from PIL import Image

from catalog_index import storage
from runners.beam_gcs import use_anonymous_beam_credentials_with_emulator
from tests.fault_proxy import READS, FaultProxy, Rule
from tests.gcs_emulator import GcsEmulator
from tests.real_images import encode, real_photos


def upload_images(bucket: str, count: int) -> list:
    photos = [np.asarray(Image.fromarray(p).resize((256, 256))) for p in real_photos().values()]
    uris = [f"gs://{bucket}/images/{n:06d}.jpg" for n in range(count)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: storage.write_bytes(uris[n], encode(
            np.roll(photos[n % len(photos)], n, axis=1), quality=85)), range(count)))
    return uris


def pipeline_fetch(uris: list) -> float:
    from transforms.fetch import FetchImages

    items = [{"item_id": str(n), "image_uri": uri, "passthrough": {}} for n, uri in enumerate(uris)]
    started = time.perf_counter()
    pipeline = beam.Pipeline(argv=["--runner=DirectRunner", "--direct_running_mode=multi_threading",
                                   f"--direct_num_workers={os.cpu_count()}"])
    _ = pipeline | beam.Create(items) | FetchImages()
    result = pipeline.run()
    result.wait_until_finish()
    elapsed = time.perf_counter() - started
    counters = result.metrics().query(MetricsFilter().with_name("fetched"))["counters"]
    fetched = sum(counter.committed for counter in counters)
    assert fetched == len(uris), f"fetched {fetched} of {len(uris)}"
    return elapsed


def naive_fetch(uris: list) -> float:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    started = time.perf_counter()
    for uri in uris:
        client = gcs.Client(project="bench", credentials=AnonymousCredentials())
        bucket, name = storage.split_gcs(uri)
        client.bucket(bucket).blob(name).download_as_bytes()
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="hold every download this long, as a network would")
    args = parser.parse_args(argv)

    emulator = GcsEmulator()
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
    use_anonymous_beam_credentials_with_emulator()
    try:
        storage.gcs_client().create_bucket("bench")
        uris = upload_images("bench", args.images)
        size = sum(len(storage.read_bytes(uri)) for uri in uris[:50]) / 50
        print(f"{len(uris)} JPEGs of ~{size / 1024:.1f} KB in gs://bench (fake-gcs-server), "
              f"{os.cpu_count()} cores, {args.latency_ms:g} ms added per download")
        proxy = None
        if args.latency_ms:
            # every read held that long (tests/fault_proxy.py, the storage-faults proxy)
            proxy = FaultProxy(emulator.url, [Rule("delay", 1.0, methods=READS,
                                                   seconds=args.latency_ms / 1000)])
            os.environ["STORAGE_EMULATOR_HOST"] = proxy.url
            storage.gcs_client.cache_clear()
        pipeline_seconds = pipeline_fetch(uris)
        naive_seconds = naive_fetch(uris)
        if proxy:
            proxy.stop()
    finally:
        emulator.stop()
    pipeline_rate, naive_rate = len(uris) / pipeline_seconds, len(uris) / naive_seconds
    print(f"pipeline FetchImages:        {pipeline_rate:8.1f} images/s  ({pipeline_seconds:.1f} s, "
          "Beam start-up included)")
    print(f"naive, client per file:      {naive_rate:8.1f} images/s  ({naive_seconds:.1f} s)")
    print(f"ratio pipeline / naive:      {pipeline_rate / naive_rate:8.2f}")


if __name__ == "__main__":
    main()
