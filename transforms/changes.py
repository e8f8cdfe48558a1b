"""What changed in a shard since the previous published version: the ``changes/`` file.

An item is ``added`` (indexed now, not then), ``removed`` (then, not now),
``image_changed`` (other image bytes), ``metadata_changed`` (the same image, and some
other metadata value: its URI, a catalog column, its caption; not a learned caption's
confidence), or, when the index space
changed (a projection fitted again), ``vector_changed`` (nothing else changed, but its
vector in the index is another). Annoy ids and shard numbers are positions, not item data:
they are not compared. Each shard compares its own items with the previous version's items
of the same shard number under the new shard count, so no stage ever holds the whole
catalog; the comparison is column by column in Arrow, nested columns a few thousand rows at
a time, so a shard holds its two tables, not a Python object per value.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from catalog_index import storage
from catalog_index.schema import CHANGES, CHANGES_SCHEMA, join, shard_of

POSITIONS = ("shard", "annoy_id")
# Not item data either: how sure a learned caption is moves a little every night the caption
# model is fitted again on a sample that moved a little (half the items of a 1.5% night at
# 4,000 items differed in nothing else). The caption itself is compared.
NOT_COMPARED = POSITIONS + ("caption_confidence",)
NESTED_ROWS = 4096  # rows of a nested column (labels, colors) compared as Python at a time


def _without_positions(table: pa.Table) -> pa.Table:
    return table.select([name for name in table.column_names if name not in POSITIONS])


def previous_table(previous: dict, shard: int, num_shards: int) -> pa.Table:
    """The previous version's metadata rows that fall in ``shard`` of ``num_shards``, sorted
    by item_id: its file of the same number when the shard count is the same, else those
    rows of every file."""
    files = [entry["metadata_file"] for entry in previous["shards"]]
    same_count = len(files) == num_shards
    tables = []
    for relative in [files[shard]] if same_count else files:
        with storage.open_read(join(previous["version_dir"], relative)) as stream:
            table = _without_positions(pq.read_table(stream))
        if not same_count:
            mine = [shard_of(item_id, num_shards) == shard
                    for item_id in table.column("item_id").to_pylist()]
            table = table.filter(pa.array(mine, pa.bool_()))
        tables.append(table)
    table = pa.concat_tables(tables, promote_options="permissive") if tables else None
    return table.sort_by("item_id") if table is not None else None


def _equal(old: pa.ChunkedArray, new: pa.ChunkedArray) -> np.ndarray:
    """Row by row, whether two columns of aligned rows hold the same value (nulls equal)."""
    if pa.types.is_nested(old.type) or pa.types.is_nested(new.type) or old.type != new.type:
        same = np.empty(len(old), dtype=bool)
        for start in range(0, len(old), NESTED_ROWS):
            stop = start + NESTED_ROWS
            same[start:stop] = [a == b for a, b in zip(old[start:stop].to_pylist(),
                                                       new[start:stop].to_pylist())]
        return same
    both_null = pc.and_(pc.is_null(old), pc.is_null(new))
    equal = pc.fill_null(pc.equal(old, new), False)
    return pc.or_(both_null, equal).to_numpy(zero_copy_only=False)


def shard_changes(previous: Optional[dict], shard: int, num_shards: int,
                  metadata_path: str, space_changed: bool = False) -> pa.Table:
    """The changes table (``CHANGES_SCHEMA``) of the shard whose new metadata file is at
    ``metadata_path``, sorted by item_id; with no previous version, every item is added.
    ``space_changed``: the index space is not the previous version's, so every item's
    vector changed."""
    now = _without_positions(pq.read_table(metadata_path))
    before = previous_table(previous, shard, num_shards) if previous else None
    now_ids = now.column("item_id")
    if before is None:
        return _changes(now_ids, np.full(len(now_ids), CHANGES.index("added")))
    before_ids = before.column("item_id")
    where = pc.index_in(now_ids, value_set=before_ids)  # row in before, null: added
    kinds = np.full(len(now_ids), -1, dtype=np.int64)
    matched = pc.is_valid(where).to_numpy(zero_copy_only=False)
    kinds[~matched] = CHANGES.index("added")
    now_rows = np.flatnonzero(matched)
    before_rows = pc.filter(where, pc.is_valid(where)).to_numpy(zero_copy_only=False)
    same_image = _equal(before.column("sha256").take(before_rows),
                        now.column("sha256").take(now_rows))
    kinds[now_rows[~same_image]] = CHANGES.index("image_changed")
    same = np.ones(len(now_rows), dtype=bool)
    for name in sorted(set(now.column_names) | set(before.column_names)):
        if name in ("item_id", "sha256") or name in NOT_COMPARED:
            continue
        if name not in now.column_names or name not in before.column_names:
            present = now if name in now.column_names else before
            rows = now_rows if present is now else before_rows
            same &= pc.is_null(present.column(name).take(rows)).to_numpy(zero_copy_only=False)
            continue
        same &= _equal(before.column(name).take(before_rows), now.column(name).take(now_rows))
    changed = now_rows[same_image & ~same]
    kinds[changed] = CHANGES.index("metadata_changed")
    if space_changed:
        kinds[now_rows[same_image & same]] = CHANGES.index("vector_changed")
    removed = pc.invert(pc.is_in(before_ids, value_set=now_ids))
    removed_ids = pc.filter(before_ids, removed)
    ids = pa.concat_arrays([now_ids.combine_chunks(), removed_ids.combine_chunks()]) \
        if len(removed_ids) else now_ids.combine_chunks()
    kinds = np.concatenate([kinds, np.full(len(removed_ids), CHANGES.index("removed"))])
    keep = kinds >= 0
    return _changes(pc.filter(ids, pa.array(keep)), kinds[keep])


def _changes(item_ids, kinds: np.ndarray) -> pa.Table:
    table = pa.Table.from_arrays(
        [pa.array(item_ids, pa.string()),
         pa.array(np.asarray(CHANGES, dtype=object)[kinds.astype(np.int64)], pa.string())],
        schema=CHANGES_SCHEMA)
    return table.sort_by("item_id")


def write_changes_parquet(changes: pa.Table, path: str) -> dict:
    """Write the rows; -> the count of each kind of change."""
    pq.write_table(changes.combine_chunks(), path, compression="zstd")
    counts = pc.value_counts(changes.column("change")).to_pylist() if changes.num_rows else []
    found = {entry["values"]: entry["counts"] for entry in counts}
    return {change: found.get(change, 0) for change in CHANGES}
