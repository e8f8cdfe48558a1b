"""How many shards a catalog gets: each shard's index vectors (float32 at the index's width)
take at most a budget of bytes, because a worker holds one shard's, with Annoy's copy of
them, while it builds its index, and because fewer, larger shards make every query cheaper.
Beam-free: the build's options and its shard stage both use it.
"""

from __future__ import annotations

import math

# 256 MiB: 250,000 items at the default 265 dimensions (docs/benchmarks.md, "A million
# items on one machine").
DEFAULT_MAX_SHARD_MB = 256


def shard_count(catalog_rows: int, width: int, max_shard_bytes: int) -> int:
    """The number of shards for a catalog of ``catalog_rows`` rows whose index vectors are
    ``width`` float32s: each shard's vectors take at most ``max_shard_bytes`` (at least 1
    shard). From the count of catalog rows, so the same catalog gets the same shards."""
    return max(1, math.ceil(catalog_rows * width * 4 / max_shard_bytes))
