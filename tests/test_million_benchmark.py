"""benchmarks/million.py: the parts a 1,000,000-item run depends on and a failure would
only show hours in (distinct variants, the exact search recall is measured against, the
small model's fixed bytes)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from annoy import AnnoyIndex

from benchmarks import million
from pipelines.demo import FASHION_MNIST_DIR

needs_fashion_mnist = pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR),
                                         reason="dataset-fashion-mnist is not installed")


@needs_fashion_mnist
def test_the_variants_of_one_image_differ_and_keep_its_size():
    # 1,005,000 items use variants 0-14 of each image (a night adds 0.5%).
    for source in (0, 1, 69_999):
        variants = [million.variant_pixels(source, k) for k in range(60)]
        assert {v.shape for v in variants} == {(28, 28)}
        assert len({v.tobytes() for v in variants}) == 60
    assert million.variant_pixels(5, 1).tobytes() == \
        million.fashion_images()[0][5][:, ::-1].tobytes()


@needs_fashion_mnist
def test_a_catalog_is_distinct_files_a_rerun_keeps(tmp_path):
    first = million.write_catalog(str(tmp_path), 300)
    assert (first["written"], first["distinct_sha256"]) == (300, 300)
    path = tmp_path / "catalog" / million.image_path(123)
    mtime = path.stat().st_mtime_ns
    again = million.write_catalog(str(tmp_path), 320)  # a longer plan has the same prefix
    assert (again["written"], again["kept"]) == (20, 300)
    assert path.stat().st_mtime_ns == mtime
    rows = (tmp_path / "catalog" / "catalog-320.csv").read_text().splitlines()
    assert rows[0] == "item_id,image_uri,title,category" and len(rows) == 321
    assert rows[1].startswith("fm-0000000,images/0000/fm-0000000.png,")


class _FakeShard:
    def __init__(self, vectors):
        self.annoy = AnnoyIndex(vectors.shape[1], "angular")
        for number, vector in enumerate(vectors):
            self.annoy.add_item(number, vector.tolist())
        self.annoy.build(2)


class _FakeIndex:
    def __init__(self, shards):
        self.shards = shards


def test_exact_search_is_brute_force_over_every_shard_leaving_the_item_out():
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal((n, 8)).astype(np.float32) for n in (50, 7, 31)]
    index = _FakeIndex([_FakeShard(part) for part in parts])
    everything = million._unit_rows(np.concatenate(parts))
    ids = np.concatenate([(shard << 32) | np.arange(len(part))
                          for shard, part in enumerate(parts)])
    asked = [0, 55, 87]
    scores, found = million.exact_top_k(index, everything[asked], ids[asked], k=5, chunk=16)
    for row, position in enumerate(asked):
        sims = everything @ everything[position]
        sims[position] = -np.inf
        expected = np.argsort(-sims)[:5]
        assert list(found[row]) == list(ids[expected])
        np.testing.assert_allclose(scores[row], sims[expected], rtol=1e-5)


def test_the_small_model_file_has_the_same_bytes_each_time(tmp_path):
    first = million.ensure_small_model(str(tmp_path / "a"))
    second = million.ensure_small_model(str(tmp_path / "b"))
    assert million.sha256_of(first) == million.sha256_of(second)
    from models.loader import load_model

    model = load_model(first, "keras")
    assert (model.info.name, model.info.embedding_dim) == (million.SMALL_MODEL_NAME, 1280)
    assert model.info.preprocessing.input_size == million.SMALL_INPUT
    pixels = np.zeros((2, million.SMALL_INPUT, million.SMALL_INPUT, 3), np.uint8)
    pixels[1, 8:24, 8:24] = 255
    output = model.predict(pixels)
    assert output.embeddings.shape == (2, 1280) and output.probabilities.shape == (2, 1000)
    assert float(output.embeddings[0] @ output.embeddings[1]) < 0.99
