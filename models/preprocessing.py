"""Image decoding and preprocessing shared by the build and the query side.

One function, :func:`preprocess_image`, turns the bytes of any common image file into the
model's input pixels, so that an image embedded at build time and the same image sent as
a query are seen identically by the model.

Fit (making a non-square image square) is ``auto`` by default, chosen per image:

- a product shot on a plain background (the border is one color) is *padded* with that
  background color: padding only extends the background, so the whole product stays in
  view (a centre crop would cut the toes off a shoe or the hem off a dress);
- a photo that fills the frame (busy border) is *centre-cropped*, as ImageNet models were
  trained: letterboxing such a photo shrinks the subject and costs recognition (the
  coffee photo's "espresso" drops from 0.95 to 0.67 when padded on white).

Square images, the e-commerce norm, are unaffected. ``pad`` (always letterbox on
``pad_color``) and ``crop`` (always centre crop) force one behaviour. The decision is made
from the image alone, so the build and the query side always agree.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from typing import Tuple

import numpy as np
import simplejpeg
from cykooz_resizer import FilterType, ImageData, PixelType, ResizeAlg, ResizeOptions, Resizer
from PIL import Image

# 64 megapixels: a 8000x8000 photo decodes to 192 MB of RGB; anything larger in a
# product catalog is a mistake or a decompression bomb.
DEFAULT_MAX_PIXELS = 64_000_000
WHITE = (255, 255, 255)
FITS = ("auto", "pad", "crop")
# A border counts as plain background when this share of its pixels is within
# PLAIN_TOLERANCE (RGB distance) of the border's median color.
PLAIN_BORDER_SHARE = 0.8
PLAIN_TOLERANCE = 30.0

# We enforce our own limit before decoding; PIL's warning-level check would only be noise.
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """An image that cannot be turned into model input. ``str()`` says why."""


class EmptyImageError(ImageError):
    pass


class UnsupportedImageError(ImageError):
    pass


class CorruptImageError(ImageError):
    pass


class ImageTooLargeError(ImageError):
    pass


@dataclass(frozen=True)
class PreprocessingSpec:
    """How a model wants its pixels: square input size, fit, and the affine normalization
    ``model_input = pixel * scale + offset`` applied to uint8 RGB."""

    input_size: int = 224
    fit: str = "auto"  # "auto", "pad" (letterbox on pad_color) or "crop" (centre crop)
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    pad_color: Tuple[int, int, int] = WHITE

    def __post_init__(self):
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}, not {self.fit!r}")

    def to_dict(self) -> dict:
        return {"input_size": self.input_size, "fit": self.fit, "scale": self.scale,
                "offset": self.offset, "pad_color": list(self.pad_color)}

    @classmethod
    def from_dict(cls, value: dict) -> "PreprocessingSpec":
        value = dict(value)
        if "pad_color" in value:
            value["pad_color"] = tuple(value["pad_color"])
        return cls(**value)


@dataclass(frozen=True)
class PreprocessedImage:
    """Model-ready pixels plus what the metadata needs to know about the original."""

    pixels: np.ndarray  # uint8 [input_size, input_size, 3]
    width: int  # original width after EXIF orientation
    height: int
    content_box: Tuple[int, int, int, int] = field(default=(0, 0, 0, 0))  # x0, y0, x1, y1 inside pixels

    @property
    def content(self) -> np.ndarray:
        """The pixels that come from the image (no padding)."""
        x0, y0, x1, y1 = self.content_box
        return self.pixels[y0:y1, x0:x1]


# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose,
# which also re-reads the EXIF block and copies an already-upright image: 0.45 ms per photo).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
_ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
# JPEGs libjpeg-turbo decodes straight to RGB (PIL's mode for YCbCr JPEGs is "RGB").
_SCALED_DECODE_MODES = ("RGB", "L")
# The DCT scales a JPEG is decoded at, as divisors: libjpeg-turbo has SIMD inverse DCTs for
# these, so 1/2 decodes faster than 3/8 although it yields more pixels (800 px JPEG: 0.99 ms
# at 1/2, 1.14 ms at 3/8; docs/benchmarks.md).
_DCT_DIVISORS = (8, 4, 2, 1)

# Resampling is libvips/Pillow-style antialiased convolution, done by fast_image_resize's
# SIMD kernels (cykooz-resizer): Catmull-Rom is Pillow's BICUBIC, box is Pillow's BOX.
# 300 -> 224 px RGB: 0.21 ms against Pillow's 0.76, output within rounding of Pillow's and
# bit-identical across the SSE4.1, AVX2 and plain code paths.
_CATMULL_ROM = ResizeOptions(resize_alg=ResizeAlg.convolution(FilterType.catmull_rom))
_BOX = ResizeOptions(resize_alg=ResizeAlg.convolution(FilterType.box))
_resizers = threading.local()


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open (not yet decode) an image, checking emptiness, format and the pixel limit."""
    if not data:
        raise EmptyImageError("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        # Never the bytes themselves: a catalog may name any file, and messages are published.
        raise UnsupportedImageError(
            f"not an image: no known image format ({len(data):,} bytes)") from None
    except Exception as error:  # PIL raises many types for broken headers
        raise CorruptImageError(f"unreadable image header: {error}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,}")
    if width == 0 or height == 0:
        raise CorruptImageError(f"image has no pixels ({width}x{height})")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composited on white."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit int) grayscale: map the 16-bit range onto 8 bits.
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def _scaled_size(width: int, height: int, input_size: int, fit: str) -> Tuple[int, int]:
    side = min(width, height) if fit == "crop" else max(width, height)
    scale = input_size / side
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize(pixels: np.ndarray, width: int, height: int,
           options: ResizeOptions = _CATMULL_ROM) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> [height, width, 3], antialiased (bicubic by default)."""
    resizer = getattr(_resizers, "resizer", None)
    if resizer is None:  # one per thread: a Resizer keeps scratch buffers between calls
        resizer = _resizers.resizer = Resizer()
    source = ImageData(pixels.shape[1], pixels.shape[0], PixelType.U8x3,
                       np.ascontiguousarray(pixels).tobytes())
    target = ImageData(width, height, PixelType.U8x3)
    resizer.resize(source, target, options)
    return np.frombuffer(target.get_buffer(), np.uint8).reshape(height, width, 3)


def border_pixels(pixels: np.ndarray, band: int = 4) -> np.ndarray:
    """The pixels of a ``band``-wide frame around an RGB array, as [K, 3]."""
    band = max(1, min(band, pixels.shape[0] // 4, pixels.shape[1] // 4))
    return np.concatenate([pixels[:band].reshape(-1, 3), pixels[-band:].reshape(-1, 3),
                           pixels[:, :band].reshape(-1, 3), pixels[:, -band:].reshape(-1, 3)])


def plain_background(pixels: np.ndarray) -> Tuple[int, int, int] | None:
    """The background color when the image's border is (mostly) one color, else None."""
    ring = border_pixels(pixels).astype(np.float32)
    median = np.median(ring, axis=0)
    if np.mean(np.linalg.norm(ring - median, axis=1) < PLAIN_TOLERANCE) < PLAIN_BORDER_SHARE:
        return None
    return tuple(int(v) for v in np.rint(median))


def decode_image(data: bytes, input_size: int, fit: str = "auto",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Tuple[np.ndarray, int, int]:
    """Decode to upright uint8 RGB pixels [H, W, 3], at least as large as the model needs.

    Returns ``(pixels, original_width, original_height)``. A large JPEG is decoded by
    libjpeg-turbo at the smallest of its 1/2, 1/4 and 1/8 DCT scales that still covers the
    size the model needs: an 800x800 product photo comes out at 400x400, which makes both
    the decode and the resize after it cheaper without ever upsampling. Any JPEG that path
    cannot take (CMYK, arithmetic coding, corrupt data) goes through PIL, which also names
    what is wrong with a broken file.
    """
    image = open_image(data, max_pixels)
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    width, height = image.size
    if orientation in _ROTATING_ORIENTATIONS:
        width, height = height, width
    # "auto" may crop, which needs the larger decode of the two.
    needed = _scaled_size(*image.size, input_size, "crop" if fit == "auto" else fit)
    pixels = None
    if image.format == "JPEG" and image.mode in _SCALED_DECODE_MODES:
        pixels = _decode_jpeg_scaled(data, image.size, needed)
    try:
        if pixels is None:
            if image.format == "JPEG":
                image.draft("RGB", needed)
            image.load()
            pixels = np.asarray(_to_rgb(image))
        if orientation in _UPRIGHT:
            pixels = np.asarray(Image.fromarray(pixels).transpose(_UPRIGHT[orientation]))
    except ImageError:
        raise
    except Exception as error:
        raise CorruptImageError(f"cannot decode {image.format or 'image'}: {error}") from None
    return pixels, width, height


def _decode_jpeg_scaled(data: bytes, size: Tuple[int, int],
                        needed: Tuple[int, int]) -> np.ndarray | None:
    """libjpeg-turbo's scaled decode to RGB (strict: any warning is a failure), or None."""
    (width, height), (needed_w, needed_h) = size, needed
    divisor = next(d for d in _DCT_DIVISORS
                   if d == 1 or (-(-width // d) >= needed_w and -(-height // d) >= needed_h))
    try:  # libjpeg-turbo picks the smallest M/8 scale giving at least these sizes: 8/divisor
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=-(-width // divisor),
                                      min_height=-(-height // divisor))
    except Exception:
        return None


def fit_to_square(pixels: np.ndarray, spec: PreprocessingSpec) -> PreprocessedImage:
    """Upright RGB pixels of any size -> the model's square input (see the module doc)."""
    size = spec.input_size
    height, width = pixels.shape[:2]
    fit, pad_color = spec.fit, spec.pad_color
    if fit == "auto" and width != height:
        background = plain_background(resize(pixels, *_scaled_size(width, height, size, "pad"),
                                             options=_BOX))
        fit, pad_color = ("crop", pad_color) if background is None else ("pad", background)
    new_w, new_h = _scaled_size(width, height, size, fit)
    resized = resize(pixels, new_w, new_h)
    if fit == "crop":
        left, top = (new_w - size) // 2, (new_h - size) // 2
        square = resized[top:top + size, left:left + size]
        box = (0, 0, size, size)
    else:
        square = np.empty((size, size, 3), np.uint8)
        square[:] = pad_color
        left, top = (size - new_w) // 2, (size - new_h) // 2
        square[top:top + new_h, left:left + new_w] = resized
        box = (left, top, left + new_w, top + new_h)
    return PreprocessedImage(np.ascontiguousarray(square), width, height, box)


def preprocess_image(data: bytes, spec: PreprocessingSpec,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> PreprocessedImage:
    """Bytes of an image file -> model-ready uint8 pixels. Raises :class:`ImageError`."""
    pixels, width, height = decode_image(data, spec.input_size, spec.fit, max_pixels)
    result = fit_to_square(pixels, spec)
    return PreprocessedImage(result.pixels, width, height, result.content_box)


def normalize(pixels: np.ndarray, spec: PreprocessingSpec) -> np.ndarray:
    """uint8 pixels (any leading shape) -> float32 model input."""
    return pixels.astype(np.float32) * np.float32(spec.scale) + np.float32(spec.offset)
