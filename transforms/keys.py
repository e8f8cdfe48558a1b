"""Keys for the build's joins: a group holds many items, not one.

Grouped by item_id or by image URI, a catalog makes one group per item. Dataflow's shuffle
serves that well; the local runner reads each group through a state request (runners/local
pages grouped values that way), about 1.5 ms a group: 30 s for 20,000 items, paid once by
the dedupe and once more by an incremental build's join with the previous version. Keyed
by one of ``BUCKETS`` buckets of the key's hash, a group holds about 1/1,024 of the
catalog, and the items in it are matched inside the DoFn: 100 items at 100,000, 10,000 at
10 million.
"""

from __future__ import annotations

from catalog_index.schema import shard_of

BUCKETS = 1024


def bucket(key: str) -> int:
    """Stable across runs and machines (sha256, like shard_of)."""
    return shard_of(key, BUCKETS)
