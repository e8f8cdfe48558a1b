"""Thumbnails for the search page: made by the server from an item's ``image_uri`` (read
with the build's limits), kept in a cache bounded in bytes, keyed by the image's sha256
(so a version that keeps an image keeps its thumbnail, and the browser may keep it too).

Why the server and not the build (docs/benchmarks.md, "catalog-index serve"): a thumbnail
written into every version costs its bytes for every item of every version kept, hashed at
every open, while a page shows a few dozen at a time.
"""

from __future__ import annotations

import collections
import io
import threading
from typing import Optional

from catalog_index.storage import DEFAULT_MAX_IMAGE_BYTES, read_image_bytes
from models.preprocessing import DEFAULT_MAX_PIXELS, open_image

THUMBNAIL_SIDE = 160
DEFAULT_CACHE_BYTES = 32 * 2**20


def make_thumbnail(data: bytes, side: int = THUMBNAIL_SIDE,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """A JPEG at most ``side`` pixels on its longer side (never enlarged), upright."""
    from PIL import Image, ImageOps

    image = open_image(data, max_pixels)  # format and pixel limit checked before decoding
    image.draft("RGB", (side, side))  # a JPEG decodes at 1/2, 1/4 or 1/8 scale
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    image = image.convert("RGB")
    image.thumbnail((side, side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


class ThumbnailCache:
    """Thumbnails by sha256, least recently used dropped past ``max_bytes``."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES,
                 max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.max_bytes, self.max_image_bytes = max_bytes, max_image_bytes
        self.max_pixels = max_pixels
        self._entries: "collections.OrderedDict[str, bytes]" = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: str, image_uri: str) -> Optional[bytes]:
        """The thumbnail of the image at ``image_uri`` (cached under ``key``); None when the
        image cannot be read or decoded."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
        try:
            thumbnail = make_thumbnail(read_image_bytes(image_uri, self.max_image_bytes),
                                       max_pixels=self.max_pixels)
        except Exception:  # unreadable, or not an image PIL decodes: no thumbnail
            return None
        with self._lock:
            if key not in self._entries and len(thumbnail) <= self.max_bytes:
                self._entries[key] = thumbnail
                self._bytes += len(thumbnail)
                while self._bytes > self.max_bytes:
                    _, dropped = self._entries.popitem(last=False)
                    self._bytes -= len(dropped)
        return thumbnail
