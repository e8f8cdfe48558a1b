"""FetchImages: read each item's image bytes (local or gs://) and its sha256."""

from __future__ import annotations

import hashlib

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.errors import ERRORS, counter, dead_letter


class FetchImageBytes(beam.DoFn):
    def process(self, item):
        try:
            with FileSystems.open(item["image_uri"]) as stream:
                data = stream.read()
        except Exception as error:  # missing, forbidden, unreachable: all dead letters
            yield dead_letter(item, "fetch", _readable(error, item["image_uri"]))
            return
        counter("fetched").inc()
        yield {**item, "image_bytes": data, "sha256": hashlib.sha256(data).hexdigest()}


def _readable(error: Exception, uri: str) -> Exception:
    if isinstance(error, FileNotFoundError) or "not found" in str(error).lower() \
            or "No such file" in str(error):
        return FileNotFoundError(f"no such image: {uri}")
    return error


class FetchImages(beam.PTransform):
    """items -> items with ``image_bytes`` and ``sha256``; failures tagged ``errors``."""

    def expand(self, items):
        return items | "Fetch" >> beam.ParDo(FetchImageBytes()).with_outputs(ERRORS, main="items")
