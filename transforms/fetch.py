"""FetchImages: read each item's image bytes (local or gs://) and their sha256.

Millions of small objects are read fastest many at a time: items are grouped into batches
(Beam's BatchElements) and each batch is downloaded by a thread pool that lives as long as
the worker (``setup``), through the one storage client of the process. Transient GCS errors
(429, 5xx, dropped connections) are retried with backoff by the client; a missing or
unreadable image becomes a dead letter of stage ``fetch``.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from catalog_index import storage
from transforms.errors import ERRORS, counter, dead_letter

DEFAULT_CONCURRENCY = 32


def read_image_bytes(uri: str) -> bytes:
    if storage.is_gcs(uri) or "://" not in uri:
        return storage.read_bytes(uri)
    with FileSystems.open(uri) as stream:  # any other file system Beam knows
        return stream.read()


def _fetch(item: dict):
    try:
        return item, read_image_bytes(item["image_uri"]), None
    except Exception as error:  # missing, forbidden, unreachable: all dead letters
        return item, None, error


class FetchImageBatch(beam.DoFn):
    def __init__(self, concurrency: int = DEFAULT_CONCURRENCY):
        self.concurrency = concurrency

    def setup(self):
        self.pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="fetch")

    def process(self, batch):
        for item, data, error in self.pool.map(_fetch, batch):
            if error is not None:
                yield dead_letter(item, "fetch", error)
                continue
            counter("fetched").inc()
            yield {**item, "image_bytes": data, "sha256": hashlib.sha256(data).hexdigest()}

    def teardown(self):
        self.pool.shutdown(wait=False)


class FetchImages(beam.PTransform):
    """items -> items with ``image_bytes`` and ``sha256``; failures tagged ``errors``."""

    def __init__(self, concurrency: int = DEFAULT_CONCURRENCY):
        super().__init__()
        self.concurrency = min(concurrency, storage.MAX_CONCURRENT_REQUESTS)

    def expand(self, items):
        return (items
                | "Batch" >> beam.BatchElements(min_batch_size=1,
                                                max_batch_size=self.concurrency * 2)
                | "Fetch" >> beam.ParDo(FetchImageBatch(self.concurrency)).with_outputs(
                    ERRORS, main="items"))
