"""models/projection.py: PCA (+ LDA from labels) fitted on a sample, deterministic to the
byte, applied the same way to catalog vectors and to queries."""

from __future__ import annotations

import io

import numpy as np
import pytest

from models import projection


def clustered(count=2000, dim=64, classes=5, seed=0):
    """Unit vectors: class means on a few axes, buried in isotropic noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % classes
    means = rng.normal(size=(classes, dim)) * 0.2
    vectors = means[labels] + rng.normal(size=(count, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), [f"class-{n}" for n in labels]


def precision_at_10(vectors, labels):
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ unit.T
    np.fill_diagonal(scores, -np.inf)
    top = np.argsort(-scores, axis=1)[:, :10]
    labels = np.asarray(labels)
    return float((labels[top] == labels[:, None]).mean())


def test_the_same_sample_gives_the_same_bytes():
    vectors, labels = clustered()
    first = projection.fit(vectors, 16, labels, "category").to_bytes()
    assert projection.fit(vectors.copy(), 16, list(labels), "category").to_bytes() == first
    other = vectors.copy()
    other[0, 0] += 1e-3
    assert projection.fit(other, 16, labels, "category").to_bytes() != first


def test_pca_keeps_the_variance_of_low_rank_data_and_is_unit_length():
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.normal(size=(64, 8)))[0]
    vectors = (rng.normal(size=(500, 8)) * np.arange(8, 0, -1)) @ basis.T + 3.0
    fitted = projection.fit(vectors, 8)
    assert fitted.explained_variance > 0.999999 and fitted.dims == 8
    assert fitted.lda.shape == (64, 0) and fitted.label_column is None
    projected = fitted.apply(vectors)
    assert projected.shape == (500, 8) and projected.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), 1.0, atol=1e-6)
    # cosine in the projected space = cosine of the centred vectors (nothing was lost)
    centred = vectors - vectors.mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    np.testing.assert_allclose(projected @ projected.T, centred @ centred.T, atol=1e-4)


def test_labels_add_directions_that_separate_them():
    vectors, labels = clustered()
    plain = projection.fit(vectors[:1000], 8)
    labelled = projection.fit(vectors[:1000], 8, labels[:1000], "category")
    assert labelled.dims == 8 + 4 and labelled.label_column == "category"
    # measured on the other half, which the fit did not see
    held_out, truth = vectors[1000:], labels[1000:]
    raw = precision_at_10(held_out, truth)
    assert precision_at_10(labelled.apply(held_out), truth) > \
        max(raw, precision_at_10(plain.apply(held_out), truth)) + 0.05


def test_items_without_a_label_count_for_pca_only():
    vectors, labels = clustered()
    some = [label if n % 2 else None for n, label in enumerate(labels)]
    fitted = projection.fit(vectors, 8, some, "category")
    assert fitted.lda.shape[1] == 4 and fitted.sample_size == 2000
    assert projection.fit(vectors, 8, [None] * 2000, "category").lda.shape[1] == 0


def test_a_query_is_projected_as_the_catalog_was():
    vectors, labels = clustered()
    fitted = projection.fit(vectors, 16, labels, "category")
    loaded = projection.Projection.from_bytes(fitted.to_bytes())
    assert loaded.summary() == fitted.summary()
    np.testing.assert_allclose(loaded.apply(vectors[7]), fitted.apply(vectors)[7], atol=1e-7)


def test_an_unknown_file_format_is_refused():
    vectors, _ = clustered(count=50)
    stored = dict(np.load(io.BytesIO(projection.fit(vectors, 4).to_bytes())))
    stored["format"] = np.array(99)
    buffer = io.BytesIO()
    np.savez(buffer, **stored)
    with pytest.raises(ValueError, match="format 99"):
        projection.Projection.from_bytes(buffer.getvalue())
