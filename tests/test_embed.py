"""The Embed stage's model handler: bounded batches, and a bad item never fails a bundle."""

from __future__ import annotations

import numpy as np

from models.loader import ModelOutput
from pipelines.build_index import parse_args
from runners.registry import default_inference_threads
from transforms.embed import EmbeddingModelHandler


class _FussyModel:
    """Embeds any batch, unless it holds an image whose first pixel is 13."""

    def predict(self, pixels):
        if (pixels[:, 0, 0, 0] == 13).any():
            raise ValueError("cannot embed this one")
        vectors = np.ones((len(pixels), 4), np.float32) / 2
        return ModelOutput(vectors, None)


def item(name, first_pixel=0):
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[0, 0, 0] = first_pixel
    return {"item_id": name, "pixels": pixels}


def test_one_bad_item_is_marked_and_its_batch_mates_are_embedded():
    handler = EmbeddingModelHandler("efficientnet_lite0", batch_size=16)
    out = {row["item_id"]: row for row in handler.run_inference(
        [item("a"), item("bad", 13), item("c")], _FussyModel())}
    assert set(out) == {"a", "bad", "c"}
    assert "embed_error" in out["bad"] and "cannot embed" in str(out["bad"]["embed_error"])
    assert out["a"]["embedding"].shape == (4,) and "embed_error" not in out["c"]


def test_a_bad_item_alone_in_its_batch_is_marked_not_raised():
    handler = EmbeddingModelHandler("efficientnet_lite0")
    (row,) = handler.run_inference([item("bad", 13)], _FussyModel())
    assert isinstance(row["embed_error"], ValueError)


def test_batches_have_the_one_size_the_build_asks_for():
    args, _ = parse_args(["--catalog=x/*.jpg", "--output=o", "--batch-size=24"])
    handler = EmbeddingModelHandler("m", batch_size=args.batch_size)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 24, "max_batch_size": 24}
    default_args, _ = parse_args(["--catalog=x/*.jpg", "--output=o"])
    assert default_args.batch_size == 4  # TFLite on CPU: fastest per image at 2-4
    assert EmbeddingModelHandler("m").batch_elements_kwargs()["max_batch_size"] == 4


def test_inference_threads_split_the_cores_between_local_workers(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    base = ["--catalog=x/*.jpg", "--output=o"]
    for workers, threads in (("0", 1), ("1", 8), ("2", 4), ("8", 1)):
        _, options = parse_args(base + [f"--direct_num_workers={workers}"])
        assert default_inference_threads(options) == threads, workers
    _, options = parse_args(base + ["--direct_running_mode=multi_processing"])
    assert default_inference_threads(options) == 1
