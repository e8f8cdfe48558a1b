"""FetchImages: read each item's image bytes (local or gs://) and their sha256.

Millions of small objects are read fastest many at a time: items are grouped into batches
(Beam's BatchElements) and each batch is downloaded by one thread pool per process, sized
to the storage client's connection pool and shared by all the worker threads of the
process, through the one storage client of the process. Transient GCS errors
(429, 5xx, dropped connections) are retried with backoff by the client; a missing or
unreadable image becomes a dead letter of stage ``fetch``.
"""

from __future__ import annotations

import functools
import hashlib
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam

from catalog_index import storage
from transforms.errors import ERRORS, counter, dead_letter

def _fetch(item: dict, max_bytes: int):
    try:
        return item, storage.read_image_bytes(item["image_uri"], max_bytes), None
    except Exception as error:  # missing, forbidden, unreachable, too large: dead letters
        return item, None, error


@functools.lru_cache(maxsize=1)
def download_pool() -> ThreadPoolExecutor:
    """One pool per process: as many downloads in flight as the client has connections."""
    return ThreadPoolExecutor(storage.MAX_CONCURRENT_REQUESTS, thread_name_prefix="fetch")


def _is_remote(item: dict) -> bool:
    return "://" in item["image_uri"]


class FetchImageBatch(beam.DoFn):
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes

    def process(self, batch):
        # Remote objects are downloaded many at a time; a local file is read in about 15 us,
        # less than handing it to a pool thread and back costs.
        fetch_all = download_pool().map if any(map(_is_remote, batch)) else map
        fetch = functools.partial(_fetch, max_bytes=self.max_bytes)
        for item, data, error in fetch_all(fetch, batch):
            if error is not None:
                yield dead_letter(item, "fetch", error)
                continue
            counter("fetched").inc()
            yield {**item, "image_bytes": data, "sha256": hashlib.sha256(data).hexdigest()}


class FetchImages(beam.PTransform):
    """items -> items with ``image_bytes`` and ``sha256``; failures tagged ``errors``."""

    def __init__(self, max_bytes: int = storage.DEFAULT_MAX_IMAGE_BYTES, batch_size: int = 64):
        super().__init__()
        self.max_bytes, self.batch_size = max_bytes, batch_size

    def expand(self, items):
        return (items
                | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_size)
                | "Fetch" >> beam.ParDo(FetchImageBatch(self.max_bytes)).with_outputs(
                    ERRORS, main="items"))
