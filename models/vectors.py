"""Vectors of unit length: the one helper every part of the project normalizes with (the
model's outputs, the projection's parts, caption models, queries)."""

from __future__ import annotations

import numpy as np


def unit_length(vectors, dtype=np.float32) -> np.ndarray:
    """``vectors`` (one, or rows along the last axis) in ``dtype``, each divided by its
    length; a zero vector stays zero."""
    vectors = np.asarray(vectors, dtype=dtype)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
