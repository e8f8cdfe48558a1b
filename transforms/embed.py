"""Embed: batched inference with Beam's RunInference and a model handler over models/.

One model per worker process (RunInference's shared handle), batches of a fixed
``batch_size`` (RunInference would otherwise grow them to 10,000). A batch that
fails is retried item by item, so one bad item cannot take its neighbours down; an item
that fails alone becomes a dead letter of stage ``embed``.
"""

from __future__ import annotations

import gc

from typing import Any, Dict, Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, RunInference

from models.loader import EmbeddingModel, load_model
from transforms.errors import ERRORS, counter, dead_letter, without
from transforms.reuse import is_reused


class EmbeddingModelHandler(ModelHandler[dict, dict, EmbeddingModel]):
    """Items with ``pixels`` in, the same items with ``embedding`` and ``probabilities`` out."""

    def __init__(self, model: str, runtime: str = "auto", batch_size: int = 4,
                 cache_dir: Optional[str] = None, inference_threads: Optional[int] = None,
                 precision: str = "float32"):
        super().__init__()
        self.model, self.runtime, self.cache_dir = model, runtime, cache_dir
        self.inference_threads, self.precision = inference_threads, precision
        self.batch_size = batch_size

    def load_model(self) -> EmbeddingModel:
        model = load_model(self.model, self.runtime, self.cache_dir, self.inference_threads,
                           self.precision)
        # TensorFlow and the model leave millions of long-lived Python objects behind; the
        # cyclic GC would rescan all of them again and again while images stream through
        # (14% of build CPU, measured with py-spy). Move them out of its sight.
        gc.freeze()
        return model

    def run_inference(self, batch: Sequence[dict], model: EmbeddingModel,
                      inference_args: Optional[Dict[str, Any]] = None) -> Iterable[dict]:
        yield from (item for item in batch if is_reused(item))  # embedded before
        batch = [item for item in batch if not is_reused(item)]
        if not batch:
            return
        try:
            output = model.predict(np.stack([item["pixels"] for item in batch]))
        except Exception as error:
            if len(batch) == 1:  # the culprit: a dead letter, not a failed bundle
                yield {**batch[0], "embed_error": error}
                return
            for item in batch:  # find the culprit; the others still get embedded
                yield from self.run_inference([item], model)
            return
        for index, item in enumerate(batch):
            probabilities = None if output.probabilities is None else output.probabilities[index]
            yield {**item, "embedding": output.embeddings[index], "probabilities": probabilities}

    def batch_elements_kwargs(self):
        # One fixed size (only a bundle's last batch is smaller): every change of batch size
        # makes TFLite re-plan its tensors, 5% of inference time when sizes vary.
        return {"min_batch_size": self.batch_size, "max_batch_size": self.batch_size}

    def get_num_bytes(self, batch: Sequence[dict]) -> int:
        return sum(item["pixels"].nbytes for item in batch if "pixels" in item)


class _CheckEmbedding(beam.DoFn):
    """Items that failed inference, or got a non-finite vector, must not reach the index."""

    def process(self, item):
        if is_reused(item):
            yield item
            return
        error, item = item.get("embed_error"), without(item, "embed_error")
        if error is None and not np.all(np.isfinite(item["embedding"])):
            error = ValueError("model produced a non-finite embedding")
        if error is not None:
            yield dead_letter(item, "embed", error)
            return
        counter("embedded").inc()
        yield item


class Embed(beam.PTransform):
    def __init__(self, handler: EmbeddingModelHandler):
        super().__init__()
        self.handler = handler

    def expand(self, items):
        return (items
                | "RunInference" >> RunInference(self.handler)
                | "CheckEmbedding" >> beam.ParDo(_CheckEmbedding()).with_outputs(
                    ERRORS, main="items"))
