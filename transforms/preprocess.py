"""DecodeAndPreprocess: image bytes -> the model's uint8 input pixels (models.preprocessing)."""

from __future__ import annotations

import apache_beam as beam

from models.preprocessing import DEFAULT_MAX_PIXELS, ImageError, PreprocessingSpec, preprocess_image
from transforms.errors import ERRORS, counter, dead_letter, without
from transforms.reuse import is_reused


class DecodeImage(beam.DoFn):
    def __init__(self, spec: PreprocessingSpec, max_pixels: int):
        self.spec, self.max_pixels = spec, max_pixels

    def process(self, item):
        if is_reused(item):
            yield item
            return
        data, item = item["image_bytes"], without(item, "image_bytes")
        try:
            image = preprocess_image(data, self.spec, self.max_pixels)
        except ImageError as error:
            yield dead_letter(item, "decode", error)
            return
        counter("decoded").inc()
        yield {**item, "pixels": image.pixels, "content_box": image.content_box,
               "width": image.width, "height": image.height}


class DecodeAndPreprocess(beam.PTransform):
    def __init__(self, spec: PreprocessingSpec, max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__()
        self.spec, self.max_pixels = spec, max_pixels

    def expand(self, items):
        return items | "Decode" >> beam.ParDo(
            DecodeImage(self.spec, self.max_pixels)).with_outputs(ERRORS, main="items")
