"""Real photos shipped by installed packages, and real image files of every awkward kind.

Used by the model tests, the pipeline end-to-end tests and the demo catalog. Nothing here
is synthetic noise: every picture is a real photograph (scikit-image's and scikit-learn's
sample photos), re-encoded into the file kind a test needs.
"""

from __future__ import annotations

import io
import os
from typing import Dict, Tuple

import numpy as np
from PIL import Image

# Real photographs (not drawings or synthetic patterns) from skimage.data.
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins",
                  "grass", "gravel", "hubble_deep_field", "immunohistochemistry",
                  "microaneurysms", "moon", "page", "retina", "rocket", "text")


def _rgb(array: np.ndarray) -> np.ndarray:
    return np.stack([array] * 3, axis=-1) if array.ndim == 2 else array[..., :3]


def real_photos() -> Dict[str, np.ndarray]:
    """About 20 real photographs as uint8 RGB arrays, by name."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    photos = {name: _rgb(getattr(skimage.data, name)()) for name in SKIMAGE_PHOTOS}
    photos["china"] = load_sample_image("china.jpg")
    photos["flower"] = load_sample_image("flower.jpg")
    return photos


def encode(array: np.ndarray, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image = array if isinstance(array, Image.Image) else Image.fromarray(array)
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def exif_rotated_jpeg(upright: np.ndarray) -> bytes:
    """A JPEG whose stored pixels are rotated; EXIF orientation 6 says 'turn me upright'."""
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # 90 deg counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # display = rotate stored 90 deg clockwise
    return encode(stored, "JPEG", quality=92, exif=exif.tobytes())


def decode_edge_cases(photos: Dict[str, np.ndarray]) -> Dict[str, Tuple[bytes, str]]:
    """Real files of each awkward kind -> (bytes, expected outcome).

    The outcome is ``"ok"`` for files that must decode, or the name of the
    :class:`models.preprocessing.ImageError` subclass they must raise.
    """
    coffee, chelsea = photos["coffee"], photos["chelsea"]
    cmyk = encode(Image.fromarray(coffee).convert("CMYK"), "JPEG", quality=92)
    sixteen_bit = Image.fromarray(photos["camera"][..., 0].astype(np.uint16) * 257)  # mode I;16
    palette = Image.fromarray(chelsea).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette_bytes = encode(palette, "PNG", transparency=0)
    frames = [Image.fromarray(coffee).convert("P"), Image.fromarray(chelsea[:, :451][:300]).resize(
        (600, 400)).convert("P")]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    whole = encode(coffee, "JPEG", quality=92)
    huge = encode(Image.new("1", (9000, 8000), 1), "PNG")  # 72 Mpx, a few KB: a bomb
    rgba = np.dstack([chelsea, np.full(chelsea.shape[:2], 255, np.uint8)])
    rgba[:40] = 0  # a transparent band at the top: must become white
    return {
        "cmyk.jpg": (cmyk, "ok"),
        "sixteen_bit.png": (encode(sixteen_bit, "PNG"), "ok"),
        "palette_transparent.png": (palette_bytes, "ok"),
        "animated.gif": (animated.getvalue(), "ok"),
        "exif_rotated.jpg": (exif_rotated_jpeg(coffee), "ok"),
        "alpha.png": (encode(rgba, "PNG"), "ok"),
        "photo.webp": (encode(coffee, "WEBP", quality=90), "ok"),
        "photo.bmp": (encode(coffee, "BMP"), "ok"),
        "photo.tiff": (encode(coffee, "TIFF"), "ok"),
        "truncated.jpg": (whole[: len(whole) // 2], "CorruptImageError"),
        "empty.jpg": (b"", "EmptyImageError"),
        "text.jpg": (b"item_id,title\n1,not an image\n", "UnsupportedImageError"),
        "huge.png": (huge, "ImageTooLargeError"),
    }


def write_files(folder: str, files: Dict[str, bytes]) -> Dict[str, str]:
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name, data in files.items():
        paths[name] = os.path.join(folder, name)
        os.makedirs(os.path.dirname(paths[name]), exist_ok=True)
        with open(paths[name], "wb") as stream:
            stream.write(data)
    return paths
