"""What changed in a shard since the previous published version: the ``changes/`` file.

An item is ``added`` (indexed now, not then), ``removed`` (then, not now),
``image_changed`` (other image bytes), ``metadata_changed`` (the same image, and some
other metadata value: its URI, a catalog column, its caption), or, when the index space
changed (a projection fitted again), ``vector_changed`` (nothing else changed, but its
vector in the index is another). Annoy ids and shard numbers
are positions, not item data: they are not compared. Each shard compares its own items
with the previous version's items of the same shard number under the new shard count, so
no stage ever holds the whole catalog.
"""

from __future__ import annotations

from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from catalog_index import storage
from catalog_index.schema import CHANGES, CHANGES_SCHEMA, join, shard_of

POSITIONS = ("shard", "annoy_id")


def _rows_by_id(table: pa.Table) -> dict:
    keep = [name for name in table.column_names if name not in POSITIONS]
    return {row["item_id"]: row for row in table.select(keep).to_pylist()}


def previous_rows(previous: dict, shard: int, num_shards: int) -> dict:
    """item_id -> metadata row of the previous version's items that fall in ``shard`` of
    ``num_shards``: its file of the same number when the shard count is the same, else
    those rows of every file."""
    files = [entry["metadata_file"] for entry in previous["shards"]]
    same_count = len(files) == num_shards
    rows = {}
    for relative in [files[shard]] if same_count else files:
        with storage.open_read(join(previous["version_dir"], relative)) as stream:
            table = pq.read_table(stream)
        if not same_count:
            mine = [shard_of(item_id, num_shards) == shard
                    for item_id in table.column("item_id").to_pylist()]
            table = table.filter(pa.array(mine, pa.bool_()))
        rows.update(_rows_by_id(table))
    return rows


def _same(old: dict, new: dict) -> bool:
    return all(old.get(key) == new.get(key) for key in old.keys() | new.keys())


def shard_changes(previous: Optional[dict], shard: int, num_shards: int,
                  metadata_path: str, space_changed: bool = False) -> list:
    """[(item_id, change)] sorted by item_id, for the shard whose new metadata file is at
    ``metadata_path``; with no previous version, every item is added. ``space_changed``:
    the index space is not the previous version's, so every item's vector changed."""
    now = _rows_by_id(pq.read_table(metadata_path))
    before = previous_rows(previous, shard, num_shards) if previous else {}
    changes = []
    for item_id in sorted(now.keys() | before.keys()):
        old, new = before.get(item_id), now.get(item_id)
        if old is None:
            changes.append((item_id, "added"))
        elif new is None:
            changes.append((item_id, "removed"))
        elif old["sha256"] != new["sha256"]:
            changes.append((item_id, "image_changed"))
        elif not _same(old, new):
            changes.append((item_id, "metadata_changed"))
        elif space_changed:
            changes.append((item_id, "vector_changed"))
    return changes


def write_changes_parquet(changes: list, path: str) -> dict:
    """Write the rows; -> the count of each kind of change."""
    ids = [item_id for item_id, _ in changes]
    kinds = [change for _, change in changes]
    pq.write_table(pa.Table.from_arrays([pa.array(ids, pa.string()), pa.array(kinds, pa.string())],
                                        schema=CHANGES_SCHEMA), path, compression="zstd")
    return {change: kinds.count(change) for change in CHANGES}
