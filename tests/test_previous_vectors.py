"""A night reads the vectors it reuses from the published version's embeddings files: the
right rows, in the asked order, with one row group in memory at a time (a 1M-item night
read four 1.2 GB shards whole before, and peaked at 3.6 GB)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from transforms.reuse import previous_vectors

ROW_GROUPS, ROWS_PER_GROUP, DIMENSION = 40, 512, 256  # 0.5 MiB of vectors per row group


def write_shard(path: str) -> np.ndarray:
    vectors = np.random.default_rng(3).standard_normal(
        (ROW_GROUPS * ROWS_PER_GROUP, DIMENSION)).astype(np.float32)
    table = pa.table({
        "item_id": [f"sku-{n}" for n in range(len(vectors))],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIMENSION)
        .cast(pa.list_(pa.float32()))})
    pq.write_table(table, path, row_group_size=ROWS_PER_GROUP, compression="none")
    return vectors


def test_reused_vectors_come_back_in_order_one_row_group_at_a_time(tmp_path):
    vectors = write_shard(str(tmp_path / "part-00001.parquet"))
    previous = {"version_dir": str(tmp_path),
                "shards": [{"shard": 1, "embeddings_file": "part-00001.parquet"}]}
    rows = np.random.default_rng(5).choice(len(vectors), size=300, replace=False)
    rows[:2] = [len(vectors) - 1, 0]  # the last row of the file, and the first
    where = [(1, int(row)) for row in rows]  # not sorted: the answer follows this order

    tracemalloc.start()
    try:
        found = previous_vectors(previous, where)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    np.testing.assert_array_equal(found, vectors[rows])
    # The file (20 MiB) is read through a Python stream, so what pyarrow holds of it is
    # traced: a row group's pages and a batch, not the file.
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB held while reading 20 MiB of vectors"
