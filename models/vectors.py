"""Vectors of unit length: the one helper every part of the project normalizes with (the
model's outputs, the projection's parts, caption models, queries); and fits whose bytes do
not depend on how many threads BLAS may use."""

from __future__ import annotations

import contextlib

import numpy as np


def unit_length(vectors, dtype=np.float32) -> np.ndarray:
    """``vectors`` (one, or rows along the last axis) in ``dtype``, each divided by its
    length; a zero vector stays zero."""
    vectors = np.asarray(vectors, dtype=dtype)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


@contextlib.contextmanager
def one_blas_thread():
    """Inside: BLAS and LAPACK on one thread. How many threads they split an eigendecomposition
    or a solve over changes its last bits: a Dask worker (one thread, set by Dask) and a
    local build (all cores) fitted projections that differed in them, and so wrote other
    index bytes. The fits are small (a few seconds), so a fit runs on one thread everywhere."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
