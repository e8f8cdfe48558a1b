"""Captions a text search engine can match: confident labels plus the product's colors.

A caption reads like "white and red sneaker": the dominant color names measured on the
product (not on its plain background), then the confident class labels. The
:class:`Captioner` interface is small on purpose, so a user's own captioning model can
replace :class:`LabelColorCaptioner` without touching the pipeline.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from models.labels import imagenet_class_names
from models.preprocessing import PLAIN_TOLERANCE, plain_background


@dataclass(frozen=True)
class Caption:
    text: str
    labels: List[Tuple[str, float]] = field(default_factory=list)  # (label, score), best first
    colors: List[Tuple[str, float]] = field(default_factory=list)  # (name, fraction), largest first


class Captioner(abc.ABC):
    """Turns one image's class probabilities and pixels into a :class:`Caption`."""

    @abc.abstractmethod
    def caption(self, probabilities: Optional[np.ndarray], pixels: np.ndarray) -> Caption:
        """``probabilities``: the model's class probabilities (or None for a model
        without a classifier); ``pixels``: uint8 RGB of the image content, no padding."""


# Color buckets: (name, rule on hue in degrees, saturation and value in 0..1).
def _color_names(hsv: np.ndarray) -> np.ndarray:
    hue, sat, val = hsv[..., 0] * 360.0, hsv[..., 1], hsv[..., 2]
    names = np.full(hue.shape, "", dtype=object)
    chromatic = (sat >= 0.2) & (val >= 0.2)
    names[val < 0.2] = "black"
    gray = ~chromatic & (val >= 0.2)
    names[gray & (val >= 0.85) & (sat < 0.12)] = "white"
    names[gray & (names == "")] = "gray"
    rules = (
        ("red", (hue < 15) | (hue >= 340)),
        ("orange", (hue >= 15) & (hue < 40)),
        ("yellow", (hue >= 40) & (hue < 70)),
        ("green", (hue >= 70) & (hue < 170)),
        ("blue", (hue >= 170) & (hue < 260)),
        ("purple", (hue >= 260) & (hue < 295)),
        ("pink", (hue >= 295) & (hue < 340)),
    )
    for name, rule in rules:
        names[chromatic & rule] = name
    warm = chromatic & (hue < 50)
    names[warm & (val < 0.6)] = "brown"
    names[warm & (sat < 0.4) & (val >= 0.75)] = "beige"
    names[chromatic & (names == "blue") & (val < 0.45)] = "navy"
    return names


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float32) / 255.0
    maximum, minimum = rgb.max(-1), rgb.min(-1)
    delta = maximum - minimum
    safe = np.where(delta == 0, 1.0, delta)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.where(maximum == r, ((g - b) / safe) % 6,
                   np.where(maximum == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6.0
    hue = np.where(delta == 0, 0.0, hue)
    sat = np.where(maximum == 0, 0.0, delta / np.where(maximum == 0, 1.0, maximum))
    return np.stack([hue, sat, maximum], axis=-1)


def product_mask(pixels: np.ndarray) -> np.ndarray:
    """Boolean mask of the pixels that belong to the product, not its background.

    When the image border is (mostly) one color, that color is the background and every
    pixel close to it is masked out. When the border is busy (a photo that fills the
    frame), the centre of the image stands in for the product.
    """
    height, width = pixels.shape[:2]
    background = plain_background(pixels)
    if background is not None:
        distance = np.linalg.norm(pixels.astype(np.float32) - np.float32(background), axis=-1)
        mask = distance >= PLAIN_TOLERANCE
        if mask.mean() >= 0.02:
            return mask
    mask = np.zeros((height, width), dtype=bool)
    mask[height // 5: height - height // 5, width // 5: width - width // 5] = True
    return mask


def dominant_colors(pixels: np.ndarray, min_fraction: float = 0.12,
                    max_colors: int = 3) -> List[Tuple[str, float]]:
    """Named colors covering at least ``min_fraction`` of the product, largest first."""
    product = pixels[product_mask(pixels)]
    if product.size == 0:
        return []
    names, counts = np.unique(_color_names(_rgb_to_hsv(product)), return_counts=True)
    fractions = counts / counts.sum()
    order = np.argsort(-fractions, kind="stable")
    return [(str(names[i]), round(float(fractions[i]), 4)) for i in order[:max_colors]
            if fractions[i] >= min_fraction]


class LabelColorCaptioner(Captioner):
    """Colors + confident ImageNet labels; ``fallback`` stands in when none is confident."""

    def __init__(self, class_names: Optional[Sequence[str]] = None, threshold: float = 0.2,
                 top_k: int = 5, fallback: str = "product"):
        self.class_names = list(class_names) if class_names is not None else None
        self.threshold = threshold
        self.top_k = top_k
        self.fallback = fallback

    def _labels(self, probabilities: Optional[np.ndarray]) -> List[Tuple[str, float]]:
        if probabilities is None:
            return []
        names = self.class_names or imagenet_class_names()
        best = np.argsort(-probabilities, kind="stable")[: self.top_k]
        return [(names[i], round(float(probabilities[i]), 4)) for i in best]

    def caption(self, probabilities, pixels) -> Caption:
        labels = self._labels(probabilities)
        colors = dominant_colors(pixels)
        confident = [name for name, score in labels if score >= self.threshold]
        color_phrase = " and ".join(name for name, _ in colors[:2])
        head = " ".join(part for part in (color_phrase, (confident or [self.fallback])[0]) if part)
        text = ", ".join([head] + confident[1:])
        return Caption(text=text, labels=labels, colors=colors)
