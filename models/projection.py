"""Vectors that fit the catalog: a linear projection learned from the build's own
embeddings, applied to every vector before it goes into the Annoy index, and to every query.

- **PCA** to ``dims`` dimensions: the directions of largest variance of a sample of the
  catalog's embeddings. Unsupervised; every catalog gets it.
- **LDA** from a label column (a category), when the sample has at least two labels: the
  ``labels - 1`` directions that best separate the labels relative to the spread within
  each (Fisher's criterion, with the within-label scatter regularized by ``LDA_SHRINK``).
- A projected vector is the PCA part, unit length, followed by the LDA part, unit length
  (each part weighted by ``sqrt(weight)``): its cosine with another is the weighted mean of
  the two parts' cosines.

The fit is deterministic: the sample is a set of items chosen by a hash of their item_id,
sorted by item_id before any arithmetic, and sums are taken in float64 in that order; the
sign of each component is fixed (its largest coordinate positive). Beam-free.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Optional, Sequence

import numpy as np

from models.vectors import one_blas_thread, unit_length

LDA_SHRINK = 0.1  # within-label scatter + LDA_SHRINK * its mean eigenvalue * identity
LDA_WEIGHT = 0.5  # share of the cosine that the LDA part carries, when there is one
FILE_FORMAT = 1
# Drift: the share of new items' variance that the PCA part loses, against the share its own
# sample lost at fit time (1 - explained_variance). Fashion-MNIST, PCA 256 fitted on 8 of the
# 10 classes (docs/benchmarks.md): new items of the same classes 1.05-1.15 (200 items), of the
# two unseen classes 1.9-2.1, a night where one new item in five is of an unseen class
# 1.25-1.38. Fewer new items than MIN_DRIFT_ITEMS say too little to refit on.
DRIFT_THRESHOLD = 1.25
MIN_DRIFT_ITEMS = 200
# A sample of fewer than this many items per dimension fits no projection: the build keeps
# the model's vectors. Fitted on a handful of items, PCA says more about them than about
# images to come (a 5-photo catalog's 4-d PCA made a red copy of a photo a stranger to it).
MIN_ITEMS_PER_DIM = 4


@dataclasses.dataclass(frozen=True)
class Projection:
    """x -> [sqrt(1 - w) * unit((x - mean) @ pca), sqrt(w) * unit((x - mean) @ lda)]."""

    mean: np.ndarray  # [input_dim] float32
    pca: np.ndarray  # [input_dim, pca_dims] float32
    lda: np.ndarray  # [input_dim, lda_dims] float32 (lda_dims may be 0)
    explained_variance: float  # share of the sample's variance the PCA part keeps
    sample_size: int
    label_column: Optional[str] = None
    lda_weight: float = 0.0

    @property
    def input_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def dims(self) -> int:
        return int(self.pca.shape[1] + self.lda.shape[1])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """[n, input_dim] -> [n, dims] float32, each row of unit length."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            return self.apply(vectors[None])[0]
        # In float64, rounded once at the end: a batch and a single query then agree to
        # the float32 value in all but the rarest ties (BLAS sums a matrix and a vector in
        # different orders).
        centered = vectors.astype(np.float64) - self.mean.astype(np.float64)
        parts = [unit_length(centered @ self.pca.astype(np.float64), np.float64) * np.sqrt(1.0 - self.lda_weight)]
        if self.lda.shape[1]:
            parts.append(unit_length(centered @ self.lda.astype(np.float64), np.float64) * np.sqrt(self.lda_weight))
        return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)

    def residual(self, vectors: np.ndarray) -> tuple:
        """-> (squared distance of ``vectors`` from the PCA subspace, squared distance from
        the mean), summed over the rows, in float64: their ratio is the share of these
        vectors' variance the PCA part loses."""
        centered = np.asarray(vectors, dtype=np.float64).reshape(-1, self.input_dim) \
            - self.mean.astype(np.float64)
        pca = self.pca.astype(np.float64)
        lost = centered - (centered @ pca) @ pca.T
        return float(np.sum(lost * lost)), float(np.sum(centered * centered))

    def drift(self, lost: float, total: float) -> float:
        """The share of variance lost on new items (sums from :meth:`residual`) over the
        share lost on the fit's own sample: about 1 for items like the sample's."""
        lost_at_fit = 1.0 - self.explained_variance
        return (lost / total) / max(lost_at_fit, 1e-12) if total > 0 else 0.0

    def to_bytes(self) -> bytes:
        """The projection as an ``.npz`` file's bytes (the same projection: the same bytes)."""
        buffer = io.BytesIO()
        np.savez(buffer, format=np.array(FILE_FORMAT), mean=self.mean, pca=self.pca,
                 lda=self.lda, explained_variance=np.array(self.explained_variance),
                 sample_size=np.array(self.sample_size),
                 label_column=np.array(self.label_column or ""),
                 lda_weight=np.array(self.lda_weight))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Projection":
        """Read and check a projection file. Raises ValueError, saying what is wrong, for a
        file that is not one (truncated, another format) and for one that is not usable:
        values that are not finite, shapes that do not fit, weights out of range, or
        components that collapse the vectors (fewer independent directions than
        dimensions)."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as stored:
                missing = [name for name in _ARRAYS if name not in stored.files]
                arrays = {name: stored[name] for name in _ARRAYS if name in stored.files}
        except Exception as error:  # zipfile, EOF, a pickle refused: not an .npz at all
            raise ValueError(f"not a projection file: it does not open as an .npz archive "
                             f"({type(error).__name__})") from None
        if missing:
            raise ValueError(f"not a projection file: it has no {', '.join(missing)}")
        if arrays["format"].shape != () or int(arrays["format"]) != FILE_FORMAT:
            raise ValueError(f"projection file format {arrays['format']}, this reader "
                             f"understands {FILE_FORMAT}")
        try:
            projection = cls(mean=arrays["mean"].astype(np.float32),
                             pca=arrays["pca"].astype(np.float32),
                             lda=arrays["lda"].astype(np.float32),
                             explained_variance=float(arrays["explained_variance"]),
                             sample_size=int(arrays["sample_size"]),
                             label_column=str(arrays["label_column"]) or None,
                             lda_weight=float(arrays["lda_weight"]))
        except (TypeError, ValueError) as error:
            raise ValueError(f"not a projection file ({error})") from None
        projection.check()
        return projection

    def check(self) -> None:
        """Raise ValueError unless this projection can map vectors to a space that ranks."""
        if self.mean.ndim != 1 or self.pca.ndim != 2 or self.lda.ndim != 2 or \
                self.pca.shape[0] != self.input_dim or self.lda.shape[0] != self.input_dim:
            raise ValueError(f"shapes do not fit: mean {self.mean.shape}, pca "
                             f"{self.pca.shape}, lda {self.lda.shape}")
        if self.pca.shape[1] < 1:
            raise ValueError("no PCA component")
        for name in ("mean", "pca", "lda"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"its {name} holds values that are not finite")
        if not (0.0 <= self.lda_weight < 1.0) or (self.lda_weight and not self.lda.shape[1]):
            raise ValueError(f"lda_weight {self.lda_weight} (0 without an LDA part, else "
                             "at least 0 and below 1)")
        if not (0.0 <= self.explained_variance <= 1.0) or self.sample_size < 0:
            raise ValueError(f"explained_variance {self.explained_variance}, sample_size "
                             f"{self.sample_size}")
        for name in ("pca", "lda"):
            components = getattr(self, name).astype(np.float64)
            if components.shape[1] and _rank(components) < components.shape[1]:
                raise ValueError(f"it collapses the vectors: its {components.shape[1]} {name} "
                                 f"components span {_rank(components)} dimensions")

    def summary(self) -> dict:
        """What the manifest says of it."""
        return {"input_dim": self.input_dim, "dims": self.dims,
                "pca_dims": int(self.pca.shape[1]), "lda_dims": int(self.lda.shape[1]),
                "label_column": self.label_column, "lda_weight": self.lda_weight,
                "sample_size": self.sample_size,
                "explained_variance": round(self.explained_variance, 6)}


_ARRAYS = ("format", "mean", "pca", "lda", "explained_variance", "sample_size", "label_column",
           "lda_weight")


def _rank(components: np.ndarray) -> int:
    """The number of independent directions among the columns (numerical rank), from the
    eigenvalues of their Gram matrix (the squared singular values: [k, k], milliseconds,
    where an SVD of the [input_dim, k] matrix took a second on every reader's open)."""
    values = np.linalg.eigvalsh(components.T @ components)
    return int(np.sum(values > max(float(values.max(initial=0.0)), 1e-60) * 1e-12))


def label_of(value) -> Optional[str]:
    """A catalog cell as a label: its text, stripped (a number's too); None when empty."""
    text = "" if value is None else str(value).strip()
    return text or None


def _fixed_signs(components: np.ndarray) -> np.ndarray:
    """Each column with its largest-magnitude coordinate positive: eigenvectors have no
    sign of their own, and the same fit must give the same bytes."""
    rows = np.abs(components).argmax(axis=0)
    signs = np.sign(components[rows, np.arange(components.shape[1])])
    return components * np.where(signs == 0, 1.0, signs)


def _top_eigenvectors(matrix: np.ndarray, count: int):
    values, vectors = np.linalg.eigh(matrix)
    order = np.argsort(values)[::-1][:count]
    return values[order], _fixed_signs(vectors[:, order])


FIT_ROWS = 2048  # sample rows converted to float64 at a time while fitting


def fit(vectors: np.ndarray, dims: int, labels: Optional[Sequence[Optional[str]]] = None,
        label_column: Optional[str] = None, lda_weight: float = LDA_WEIGHT) -> Projection:
    """Fit on ``vectors`` [n, input_dim] (a sample sorted by item_id) and, where given, their
    ``labels`` (None for an item without one).

    Sums run in float64 over FIT_ROWS rows at a time, in row order (so the same sample gives
    the same bytes): what the fit holds beside the sample is a few [input_dim, input_dim]
    matrices, not float64 copies of the sample (20,000 x 1,280: 205 MB each)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) < 2:
        raise ValueError(f"a projection needs at least 2 sample vectors, got {len(vectors)}")
    with one_blas_thread():
        return _fit(vectors, dims, labels, label_column, lda_weight)


def _fit(vectors, dims, labels, label_column, lda_weight) -> Projection:
    count, input_dim = vectors.shape
    dims = min(dims, input_dim, count - 1)
    mean = sum(chunk.sum(axis=0) for _, chunk in _chunks(vectors)) / count
    covariance = np.zeros((input_dim, input_dim))
    for _, chunk in _chunks(vectors, mean):
        covariance += chunk.T @ chunk
    covariance /= count
    values, pca = _top_eigenvectors(covariance, dims)
    total = float(np.trace(covariance))
    explained = float(values.sum() / total) if total > 0 else 1.0
    lda = np.zeros((input_dim, 0))
    if labels is not None:
        lda = _fit_lda(vectors, mean, labels)
    weight = lda_weight if lda.shape[1] else 0.0
    return Projection(mean=mean.astype(np.float32), pca=pca.astype(np.float32),
                      lda=lda.astype(np.float32), explained_variance=explained,
                      sample_size=count, label_column=label_column if weight else None,
                      lda_weight=weight)


def _chunks(vectors: np.ndarray, mean: Optional[np.ndarray] = None):
    """Yields (first row, rows as float64, less ``mean``) FIT_ROWS rows at a time."""
    for start in range(0, len(vectors), FIT_ROWS):
        chunk = vectors[start:start + FIT_ROWS].astype(np.float64)
        yield start, chunk if mean is None else chunk - mean


def _fit_lda(vectors: np.ndarray, mean: np.ndarray,
             labels: Sequence[Optional[str]]) -> np.ndarray:
    """Fisher LDA on the labelled rows of ``vectors`` (less ``mean``): [input_dim,
    classes - 1]."""
    labels = list(labels)
    names = sorted({label for label in labels if label})
    if len(names) < 2:
        return np.zeros((vectors.shape[1], 0))
    number = {name: index for index, name in enumerate(names)}
    classes = np.array([number[label] if label else -1 for label in labels])
    dim = vectors.shape[1]
    sums, counts = np.zeros((len(names), dim)), np.bincount(classes[classes >= 0],
                                                            minlength=len(names))
    for start, chunk in _chunks(vectors, mean):
        rows = classes[start:start + len(chunk)]
        for index in np.unique(rows[rows >= 0]):
            sums[index] += chunk[rows == index].sum(axis=0)
    labelled = int(counts.sum())
    class_means = sums / counts[:, None]
    overall = sums.sum(axis=0) / labelled
    within = np.zeros((dim, dim))
    for start, chunk in _chunks(vectors, mean):
        rows = classes[start:start + len(chunk)]
        spread = chunk[rows >= 0] - class_means[rows[rows >= 0]]
        within += spread.T @ spread
    offsets = class_means - overall
    between = (offsets * counts[:, None]).T @ offsets
    within /= labelled
    between /= labelled
    values, vectors_ = np.linalg.eigh(within)
    shrink = LDA_SHRINK * max(float(values.mean()), 1e-12)
    whiten = vectors_ / np.sqrt(np.maximum(values, 0.0) + shrink)  # within^(-1/2), regularized
    _, directions = _top_eigenvectors(whiten.T @ between @ whiten, len(names) - 1)
    return _fixed_signs(whiten @ directions)
