"""Captions in the catalog's own words, for the items that have none.

The catalog's text (``title``, ``category``: the build's ``--text-columns``) says what its
products are called. From a bounded sample of the items that have text, a small model
learns how image embeddings map to those phrases; then every item is captioned in that
vocabulary, with its colors: "black ankle boot".

- Vocabulary: the short values (at most :data:`MAX_PHRASE_WORDS` words) of the text columns,
  folded to lower case and single spaces, that at least :data:`MIN_SUPPORT` sampled items
  share; the :data:`MAX_PHRASES` most frequent.
- Model (``head``): a linear head, embedding -> phrase, fitted in closed form (ridge
  regression to the phrases each sampled item carries, on unit-length embeddings). It is
  deterministic, a few MB at most, and broadcast to the shard workers as a side input.
  The other candidate, voting among the nearest sampled items (``neighbours``), is kept for
  the benchmark that chose between them (benchmarks/text_quality.py, docs/benchmarks.md).
- Confidence: the head's score for the chosen phrase, clipped to 0..1 (a least-squares
  estimate of the probability that the phrase applies).

Beam-free: transforms/caption_transfer.py samples and fits, transforms/shard.py captions.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from models.vectors import one_blas_thread, unit_length

DEFAULT_TEXT_COLUMNS = ("title", "category")
MAX_SAMPLE = 10_000  # items with text the model is fitted on (their vectors as float16)
MIN_SUPPORT = 5  # sampled items a phrase needs to join the vocabulary
MAX_PHRASES = 1_000
MAX_PHRASE_WORDS = 4
RIDGE = 1e-2  # the head's L2 penalty, relative to the mean of the Gram matrix's diagonal
MIN_CONFIDENCE = 0.25  # below this, an item keeps the ImageNet-label caption
NEIGHBOURS = 10

# Where an item's caption came from (metadata column caption_source).
FROM_CATALOG, FROM_EMBEDDING, FROM_LABELS = "catalog", "learned", "labels"


def phrase(value: Optional[str]) -> Optional[str]:
    """A text value as a vocabulary phrase, or None when it is empty or too long."""
    words = (value or "").lower().split()
    return " ".join(words) if 0 < len(words) <= MAX_PHRASE_WORDS else None


def item_phrases(texts: Sequence[Optional[str]]) -> List[str]:
    """The distinct phrases among an item's text values, in column order."""
    return list(dict.fromkeys(p for p in map(phrase, texts) if p))


def sample_key(item_id: str) -> bytes:
    """Items with the smallest keys form the sample: a fixed pseudo-random subset, the same
    for the same catalog."""
    return hashlib.sha256(item_id.encode()).digest()[:8]


def unit(vectors: np.ndarray) -> np.ndarray:
    return unit_length(vectors, np.float64)


@dataclasses.dataclass(frozen=True)
class CaptionModel:
    """Embedding -> (phrase, confidence). ``weights``: [dimension + 1, phrases] (the last
    row is the bias) for ``head``; ``sample``/``sample_labels`` for ``neighbours``."""

    method: str
    phrases: Tuple[str, ...]
    weights: Optional[np.ndarray] = None
    sample: Optional[np.ndarray] = None
    sample_labels: Optional[np.ndarray] = None  # [sample, phrases] 0/1

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """[items, phrases]: how strongly each phrase applies to each item."""
        x = unit(vectors)
        if self.method == "head":
            return x @ self.weights[:-1] + self.weights[-1]
        similarity = x @ self.sample.T
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :NEIGHBOURS]
        votes = np.take_along_axis(similarity, nearest, axis=1).clip(min=0)
        labels = self.sample_labels[nearest]  # [items, k, phrases]
        return (votes[:, :, None] * labels).sum(1) / np.maximum(votes.sum(1), 1e-12)[:, None]

    def predict(self, vectors: np.ndarray) -> Tuple[List[str], np.ndarray]:
        """-> (best phrase per item, its confidence in 0..1)."""
        if len(vectors) == 0:
            return [], np.zeros(0, np.float32)
        scores = self.scores(vectors)
        best = np.argmax(scores, axis=1)
        confidence = np.clip(scores[np.arange(len(best)), best], 0.0, 1.0).astype(np.float32)
        return [self.phrases[i] for i in best], confidence


def vocabulary(sample_phrases: Sequence[Sequence[str]]) -> Tuple[str, ...]:
    counts = collections.Counter(p for phrases in sample_phrases for p in phrases)
    frequent = [p for p, n in counts.items() if n >= MIN_SUPPORT]
    frequent.sort(key=lambda p: (-counts[p], p))
    return tuple(frequent[:MAX_PHRASES])


def fit(vectors: np.ndarray, sample_phrases: Sequence[Sequence[str]],
        method: str = "head") -> Optional[CaptionModel]:
    """A caption model from sampled items (in a fixed order) and their phrases; None when
    the sample shares no phrase (a catalog without usable text)."""
    phrases = vocabulary(sample_phrases)
    if not phrases:
        return None
    column = {p: i for i, p in enumerate(phrases)}
    targets = np.zeros((len(sample_phrases), len(phrases)))
    for row, item in enumerate(sample_phrases):
        for p in item:
            if p in column:
                targets[row, column[p]] = 1.0
    if method == "neighbours":
        return CaptionModel("neighbours", phrases, sample=unit(vectors).astype(np.float32),
                            sample_labels=targets.astype(np.float32))
    # Normal equations, a few thousand rows at a time: memory stays at the Gram matrix.
    dimension = vectors.shape[1] + 1
    gram, moments = np.zeros((dimension, dimension)), np.zeros((dimension, len(phrases)))
    for start in range(0, len(vectors), 2048):
        rows = unit(vectors[start:start + 2048])
        rows = np.hstack([rows, np.ones((len(rows), 1))])
        gram += rows.T @ rows
        moments += rows.T @ targets[start:start + 2048]
    penalty = RIDGE * np.trace(gram) / dimension * np.eye(dimension)
    penalty[-1, -1] = 0.0  # the bias is not shrunk
    with one_blas_thread():  # the same weights on a Dask worker and a local build
        weights = np.linalg.solve(gram + penalty, moments)
    return CaptionModel("head", phrases, weights=weights.astype(np.float32))


def caption_text(colors: Sequence[Dict], product: str) -> str:
    """"white and gray t-shirt/top": the item's colors (models.captioner), then the product
    phrase."""
    from models.captioner import colors_phrase

    return " ".join(part for part in (colors_phrase(c["name"] for c in colors or []), product)
                    if part)


def caption_items(model: Optional[CaptionModel], texts: Sequence[Sequence[Optional[str]]],
                  colors: Sequence, vectors: np.ndarray, label_captions: Sequence[str],
                  label_confidence: Sequence[float]):
    """Caption, source and confidence for each item (rows of ``vectors``):

    - an item whose own text holds a vocabulary phrase: that phrase, from the catalog;
    - else the model's phrase when it is at least MIN_CONFIDENCE sure;
    - else (or without a model) the ImageNet-label caption the build made before.
    """
    count = len(label_captions)
    captions, sources = list(label_captions), [FROM_LABELS] * count
    confidence = np.asarray(label_confidence, dtype=np.float32).copy()
    if model is None or count == 0:
        return captions, sources, confidence
    known = set(model.phrases)
    predicted, predicted_confidence = model.predict(vectors)
    for row in range(count):
        own = next((p for p in item_phrases(texts[row]) if p in known), None)
        if own is not None:
            captions[row], sources[row], confidence[row] = (
                caption_text(colors[row], own), FROM_CATALOG, 1.0)
        elif predicted_confidence[row] >= MIN_CONFIDENCE:
            captions[row], sources[row], confidence[row] = (
                caption_text(colors[row], predicted[row]), FROM_EMBEDDING,
                predicted_confidence[row])
    return captions, sources, confidence
