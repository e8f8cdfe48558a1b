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


COLOR_NAMES = ("black", "white", "gray", "red", "orange", "yellow", "green", "blue", "purple",
               "pink", "brown", "beige", "navy")
_CODE = {name: code for code, name in enumerate(COLOR_NAMES)}
# Hue bands in degrees for saturated colors; red wraps around 360.
_HUE_BANDS = (("red", 0, 15), ("orange", 15, 40), ("yellow", 40, 70), ("green", 70, 170),
              ("blue", 170, 260), ("purple", 260, 295), ("pink", 295, 340), ("red", 340, 361))
# Colors are measured on at most this many pixels per side: plenty for shares of 12%.
COLOR_SAMPLE_SIDE = 64


# How a color is written in a caption, where its name alone would not be searched for.
COLOR_PHRASES = {"navy": "navy blue"}


def colors_phrase(names) -> str:
    """"white", "white and gray", "white, gray and red": every color a caption names."""
    names = [COLOR_PHRASES.get(name, name) for name in names]
    return " and ".join(names) if len(names) <= 2 else ", ".join(names[:-1]) + " and " + names[-1]


def _color_codes(hsv: np.ndarray) -> np.ndarray:
    """Index into COLOR_NAMES for each pixel, from hue (0..1), saturation and value."""
    hue, sat, val = hsv[..., 0] * 360.0, hsv[..., 1], hsv[..., 2]
    codes = np.full(hue.shape, _CODE["gray"], dtype=np.int8)
    chromatic = (sat >= 0.2) & (val >= 0.2)
    for name, low, high in _HUE_BANDS:
        codes[chromatic & (hue >= low) & (hue < high)] = _CODE[name]
    warm = chromatic & (hue < 50)
    codes[warm & (val < 0.6)] = _CODE["brown"]
    codes[warm & (sat < 0.4) & (val >= 0.75)] = _CODE["beige"]
    codes[chromatic & (codes == _CODE["blue"]) & (val < 0.45)] = _CODE["navy"]
    codes[~chromatic & (val >= 0.85) & (sat < 0.12)] = _CODE["white"]
    codes[val < 0.2] = _CODE["black"]
    return codes


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
    step = max(1, -(-max(pixels.shape[:2]) // COLOR_SAMPLE_SIDE))
    sample = pixels[::step, ::step]
    product = sample[product_mask(sample)]
    if product.size == 0:
        return []
    counts = np.bincount(_color_codes(_rgb_to_hsv(product)), minlength=len(COLOR_NAMES))
    fractions = counts / counts.sum()
    order = np.argsort(-fractions, kind="stable")
    return [(COLOR_NAMES[i], round(float(fractions[i]), 4)) for i in order[:max_colors]
            if fractions[i] >= min_fraction]


def caption_fields(caption: Caption, threshold: float) -> dict:
    """An image's caption as metadata fields: the text, its source ("labels"), how sure it
    is (the best label score at or above ``threshold``, else 0), the labels and colors."""
    confident = [score for _, score in caption.labels if score >= threshold]
    return {"caption": caption.text, "caption_source": "labels",
            "caption_confidence": confident[0] if confident else 0.0,
            "labels": [{"label": label, "score": score} for label, score in caption.labels],
            "colors": [{"name": name, "fraction": share} for name, share in caption.colors]}


# Bump when the same image would get other labels or colors (the color bands, the product
# mask, the rounding): versions built before are then not reused by incremental builds.
ITEM_FIELDS_VERSION = 1


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
        # Distinct classes can share a name ("tabby cat" twice, "missile" twice): one label
        # per name, with the classes' probabilities added up.
        by_name = {}
        for i in np.argsort(-probabilities, kind="stable")[: self.top_k * 3]:
            by_name[names[i]] = by_name.get(names[i], 0.0) + float(probabilities[i])
        ranked = sorted(by_name.items(), key=lambda pair: -pair[1])[: self.top_k]
        return [(name, round(score, 4)) for name, score in ranked]

    def caption(self, probabilities, pixels) -> Caption:
        labels, colors = self._labels(probabilities), dominant_colors(pixels)
        return Caption(text=self.describe(labels, colors), labels=labels, colors=colors)

    def describe(self, labels, colors) -> str:
        """The caption text of an image's labels and colors (also for an image whose labels
        and colors a previous version already measured)."""
        confident = [name for name, score in labels if score >= self.threshold]
        head = " ".join(part for part in (colors_phrase(name for name, _ in colors),
                                          (confident or [self.fallback])[0]) if part)
        return ", ".join([head] + confident[1:])

    def settings(self) -> dict:
        """What decides an image's labels, colors and caption, beside the model: a previous
        version's are reused only when these are the same."""
        return {"captioner": type(self).__name__, "version": ITEM_FIELDS_VERSION,
                "threshold": self.threshold, "top_k": self.top_k, "fallback": self.fallback}
