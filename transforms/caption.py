"""Caption: labels, colors and caption text for each embedded item (models.captioner)."""

from __future__ import annotations

from typing import Optional

import apache_beam as beam

from models.captioner import Captioner, LabelColorCaptioner, caption_fields
from transforms.errors import ERRORS, counter, dead_letter, without
from transforms.reuse import is_reused


class CaptionItem(beam.DoFn):
    def __init__(self, captioner: Captioner):
        self.captioner = captioner
        self.captioner_threshold = getattr(captioner, "threshold", 0.0)

    def process(self, item):
        if is_reused(item):  # captioned from the previous version's labels and colors
            yield item
            return
        x0, y0, x1, y1 = item["content_box"]
        pixels, probabilities = item["pixels"], item["probabilities"]
        item = without(item, "content_box", "pixels", "probabilities")
        try:
            caption = self.captioner.caption(probabilities, pixels[y0:y1, x0:x1])
        except Exception as error:
            yield dead_letter(item, "caption", error)
            return
        counter("captioned").inc()
        yield {**item, **caption_fields(caption, self.captioner_threshold)}


class Caption(beam.PTransform):
    def __init__(self, captioner: Optional[Captioner] = None, class_names=None):
        super().__init__()
        self.captioner = captioner or LabelColorCaptioner(class_names=class_names)

    def expand(self, items):
        return items | "Caption" >> beam.ParDo(CaptionItem(self.captioner)).with_outputs(
            ERRORS, main="items")
