"""FetchImages: read each item's image bytes (local or gs://) and their sha256.

Millions of small objects are read fastest many at a time, and a few of them are always
slow. Each worker thread keeps a window of downloads in flight (``window``, the storage
client's connection pool size by default) in one thread pool per process, through the one
storage client of the process, and hands each item on as soon as its download ends. A slow
object holds up one slot of the window, never the others: there are no rounds to wait for.
Transient GCS errors (429, 5xx, dropped connections) are retried with backoff by the
client; a missing or unreadable image becomes a dead letter of stage ``fetch``.

Local files are read in place (about 15 us each, less than a hand-off to a pool thread).
"""

from __future__ import annotations

import functools
import hashlib
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from catalog_index import storage
from transforms.errors import ERRORS, counter, dead_letter
from transforms.reuse import is_reused


def _fetch(item: dict, max_bytes: int):
    try:
        return item, storage.read_image_bytes(item["image_uri"], max_bytes), None
    except Exception as error:  # missing, forbidden, unreachable, too large: dead letters
        return item, None, error


def _fetched(item: dict, data, error, keep_bytes: bool = True):
    if error is not None:
        return dead_letter(item, "fetch", error)
    counter("fetched" if keep_bytes else "hashed").inc()
    sha256 = hashlib.sha256(data).hexdigest()
    return {**item, "image_bytes": data, "sha256": sha256} if keep_bytes else \
        {**item, "sha256": sha256}


@functools.lru_cache(maxsize=1)
def download_pool() -> ThreadPoolExecutor:
    """One pool per process: as many downloads in flight as the client has connections."""
    return ThreadPoolExecutor(storage.MAX_CONCURRENT_REQUESTS, thread_name_prefix="fetch")


def _is_remote(item: dict) -> bool:
    return "://" in item["image_uri"]


class FetchImage(beam.DoFn):
    """One item in, the item with its bytes (or a dead letter) out, in the order downloads
    end. At most ``window`` downloads of this DoFn instance are in flight."""

    def __init__(self, max_bytes: int, window: int, keep_bytes: bool = True):
        self.max_bytes, self.window, self.keep_bytes = max_bytes, window, keep_bytes
        self._in_flight: set[Future] = set()

    def start_bundle(self):
        self._in_flight = set()

    def process(self, item):
        if is_reused(item):
            yield item
            return
        if not _is_remote(item):
            yield _fetched(*_fetch(item, self.max_bytes), self.keep_bytes)
            return
        self._in_flight.add(download_pool().submit(_fetch, item, self.max_bytes))
        # Hand on what has ended; wait only when the window is full, and then for one.
        yield from self._ended(block=len(self._in_flight) >= self.window)

    def finish_bundle(self):
        while self._in_flight:
            for output in self._ended(block=True):
                if isinstance(output, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(
                        output.tag, GlobalWindows.windowed_value(output.value))
                else:
                    yield GlobalWindows.windowed_value(output)

    def _ended(self, block: bool):
        done, self._in_flight = wait(self._in_flight, timeout=None if block else 0,
                                     return_when=FIRST_COMPLETED)
        for future in done:
            yield _fetched(*future.result(), self.keep_bytes)


class FetchImages(beam.PTransform):
    """items -> items with ``image_bytes`` and ``sha256`` (only the ``sha256`` with
    ``keep_bytes`` False: an incremental build hashes images to find those the published
    version embedded, and reads again only the others); failures tagged ``errors``."""

    def __init__(self, max_bytes: int = storage.DEFAULT_MAX_IMAGE_BYTES,
                 window: int = storage.MAX_CONCURRENT_REQUESTS, keep_bytes: bool = True):
        super().__init__()
        self.max_bytes, self.window, self.keep_bytes = max_bytes, window, keep_bytes

    def expand(self, items):
        return items | "Fetch" >> beam.ParDo(FetchImage(
            self.max_bytes, self.window, self.keep_bytes)).with_outputs(ERRORS, main="items")
