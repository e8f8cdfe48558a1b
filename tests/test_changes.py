"""changes/: what changed in a shard since the previous version, compared in Arrow column by
column (a shard of 250,000 items must not become 250,000 Python dicts twice)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from catalog_index.schema import metadata_schema
from transforms.changes import shard_changes, write_changes_parquet


def metadata(rows, columns=("title",)):
    schema = metadata_schema(columns)
    full = [{"shard": 0, "annoy_id": n, "image_uri": f"/i/{row['item_id']}.jpg", "width": 10,
             "height": 10, "caption": "a shoe", "caption_source": "catalog",
             "caption_confidence": 1.0, "labels": [{"label": "shoe", "score": 0.5}],
             "colors": [{"name": "red", "fraction": 0.25}], **row}
            for n, row in enumerate(sorted(rows, key=lambda row: row["item_id"]))]
    return pa.Table.from_pylist(full, schema=schema)


def reference(before: pa.Table, now: pa.Table, space_changed: bool):
    """What changes/ held when it was computed on Python dicts (before this module's
    Arrow comparison), less a learned caption's confidence: the same rows are expected."""
    def rows(table):
        keep = [name for name in table.column_names
                if name not in ("shard", "annoy_id", "caption_confidence")]
        return {row["item_id"]: row for row in table.select(keep).to_pylist()}

    old, new = rows(before), rows(now)
    found = []
    for item_id in sorted(old.keys() | new.keys()):
        a, b = old.get(item_id), new.get(item_id)
        if a is None:
            found.append((item_id, "added"))
        elif b is None:
            found.append((item_id, "removed"))
        elif a["sha256"] != b["sha256"]:
            found.append((item_id, "image_changed"))
        elif not all(a.get(key) == b.get(key) for key in a.keys() | b.keys()):
            found.append((item_id, "metadata_changed"))
        elif space_changed:
            found.append((item_id, "vector_changed"))
    return found


def test_changes_are_those_a_row_by_row_comparison_finds(tmp_path):
    rng = np.random.default_rng(5)
    before_rows = [{"item_id": f"sku-{n:04d}", "sha256": f"h{n}", "title": f"Shoe {n}"}
                   for n in range(600)]
    now_rows = []
    for n, row in enumerate(before_rows):
        change = rng.integers(0, 8)
        if change == 0:
            continue  # removed
        row = dict(row)
        if change == 1:
            row["sha256"] = f"other-{n}"
        elif change == 2:
            row["title"] = None
        elif change == 3:
            row["labels"] = [{"label": "shoe", "score": 0.75}]  # a nested value differs
        elif change == 4:
            row["colors"] = []
        elif change == 5:
            row["caption_confidence"] = 0.5  # a refitted caption model: not a change
        now_rows.append(row)
    now_rows += [{"item_id": f"new-{n}", "sha256": f"n{n}", "title": "New"} for n in range(30)]
    before = metadata(before_rows)
    now = metadata(now_rows, columns=("title", "brand"))  # a column the version did not have
    pq.write_table(before, tmp_path / "before.parquet")
    pq.write_table(now, tmp_path / "now.parquet")
    previous = {"version_dir": str(tmp_path), "shards": [{"metadata_file": "before.parquet"}]}
    for space_changed in (False, True):
        table = shard_changes(previous, 0, 1, str(tmp_path / "now.parquet"), space_changed)
        found = list(zip(table.column("item_id").to_pylist(), table.column("change").to_pylist()))
        assert found == reference(before, now, space_changed)
        kinds = {kind for _, kind in found}
        assert {"added", "removed", "image_changed", "metadata_changed"} <= kinds
        assert ("vector_changed" in kinds) is space_changed
        counts = write_changes_parquet(table, str(tmp_path / "changes.parquet"))
        assert sum(counts.values()) == len(found)
        assert pq.read_table(tmp_path / "changes.parquet").num_rows == len(found)


def test_without_a_previous_version_every_item_is_added(tmp_path):
    now = metadata([{"item_id": f"b{n}", "sha256": "h", "title": "t"} for n in range(5)])
    pq.write_table(now, tmp_path / "now.parquet")
    table = shard_changes(None, 0, 1, str(tmp_path / "now.parquet"))
    assert table.to_pylist() == [{"item_id": f"b{n}", "change": "added"} for n in range(5)]
