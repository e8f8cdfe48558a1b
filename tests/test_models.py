"""models/: the offline EfficientNet-Lite0/1/2, preprocessing, labels, captions, TFLite."""

from __future__ import annotations

import hashlib
import io
import os
import socket

import numpy as np
import pytest

from models import efficientnet_lite
from models import preprocessing as pp
from models.captioner import LabelColorCaptioner, dominant_colors
from models.labels import imagenet_class_names
from catalog_index.storage import sha256_of_file
from models.loader import LITE0_PREPROCESSING, ModelLoadError, load_model
from tests.real_images import decode_edge_cases, encode

SPEC = LITE0_PREPROCESSING


def embed(model, images):
    batch = np.stack([pp.preprocess_image(data, SPEC).pixels for data in images])
    return model.predict(batch)


def top_labels(probabilities, k):
    names = imagenet_class_names()
    return [names[i] for i in np.argsort(-probabilities)[:k]]


def test_network_is_blocked_for_the_whole_suite():
    with pytest.raises(OSError, match="reach the network"):
        socket.create_connection(("8.8.8.8", 53), timeout=1)


def test_model_declares_what_the_manifest_records(keras_model):
    info = keras_model.info.to_manifest()
    assert info["name"] == "efficientnet_lite0"
    assert info["input_size"] == 224 and info["embedding_dim"] == 1280
    assert info["num_classes"] == 1000 and len(info["fingerprint"]) == 64
    assert info["preprocessing"]["scale"] == 1 / 128 and info["preprocessing"]["offset"] == -127 / 128
    assert sum(np.prod(w.shape) for w in keras_model.model.weights
               if "moving" not in w.path) == 4_652_008  # trainable params of Lite0


def test_class_names_are_in_imagenet_order():
    names = imagenet_class_names()
    assert len(names) == 1000
    assert (names[967], names[770], names[285], names[0]) == ("espresso", "sneaker", "domestic cat", "tench")


def test_coffee_is_espresso_and_cat_is_a_cat(keras_model, photos):
    output = embed(keras_model, [encode(photos["coffee"]), encode(photos["chelsea"])])
    coffee, cat = output.probabilities
    assert top_labels(coffee, 1) == ["espresso"] and coffee.max() >= 0.8
    assert any("cat" in label for label in top_labels(cat, 3))
    norms = np.linalg.norm(output.embeddings, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


@pytest.mark.parametrize("name, input_size, params", [
    ("efficientnet_lite1", 240, 5_416_680), ("efficientnet_lite2", 260, 6_092_072)])
def test_larger_lite_models_see_espresso_and_a_cat_on_keras_and_tflite(
        keras_model, model_cache, photos, name, input_size, params):
    keras_lite = load_model(name, runtime="keras", cache_dir=model_cache)
    tflite_lite = load_model(name, runtime="tflite", cache_dir=model_cache)
    info = keras_lite.info.to_manifest()
    assert info["name"] == name and info["input_size"] == input_size
    assert info["embedding_dim"] == 1280 and info["preprocessing"]["offset"] == -127 / 128
    assert info["fingerprint"] not in (keras_model.info.fingerprint, "")
    assert tflite_lite.info.fingerprint == info["fingerprint"]
    assert sum(np.prod(w.shape) for w in keras_lite.model.weights
               if "moving" not in w.path) == params  # trainable params of the TF reference's
    pixels = np.stack([pp.preprocess_image(encode(photos[photo]), keras_lite.info.preprocessing)
                       .pixels for photo in ("coffee", "chelsea")])
    assert pixels.shape[1:] == (input_size, input_size, 3)
    keras_out, tflite_out = keras_lite.predict(pixels), tflite_lite.predict(pixels)
    for output in (keras_out, tflite_out):
        coffee, cat = output.probabilities
        assert top_labels(coffee, 1) == ["espresso"]
        assert "cat" in top_labels(cat, 1)[0]
    assert np.sum(keras_out.embeddings * tflite_out.embeddings, axis=1).min() >= 0.9999


def test_lite_stage_tables_follow_the_reference_scaling():
    """Depth scales the inner stages (ceil), never the first and last: 16 and 21 blocks."""
    repeats = {name: [r for r, _ in variant.stages]
               for name, variant in efficientnet_lite.VARIANTS.items()}
    assert repeats == {"efficientnet_lite0": [1, 2, 2, 3, 3, 4, 1],
                       "efficientnet_lite1": [1, 3, 3, 4, 4, 5, 1],
                       "efficientnet_lite2": [1, 3, 3, 4, 4, 5, 1]}


def test_lite0_fingerprint_is_the_one_indexes_were_built_with():
    """The zoo changed the builder's code, not Lite0's graph: its fingerprint stays, so
    published indexes keep answering queries."""
    path = efficientnet_lite.weights_path()
    before_the_zoo = hashlib.sha256(f"{sha256_of_file(path)}:lite0-keras-v1".encode())
    assert efficientnet_lite.cache_key(path) == before_the_zoo.hexdigest()


@pytest.mark.parametrize("name, words", [
    ("coffee", {"espresso"}), ("chelsea", {"cat"}), ("camera", {"tripod", "camera"}),
    ("rocket", {"rig", "missile", "rocket", "crane"}),
])
def test_captions_name_what_is_in_the_photo(keras_model, photos, name, words):
    pre = pp.preprocess_image(encode(photos[name]), SPEC)
    caption = LabelColorCaptioner().caption(
        keras_model.predict(pre.pixels[None]).probabilities[0], pre.content)
    assert any(word in caption.text for word in words), caption.text
    assert caption.labels[0][1] >= caption.labels[-1][1]


def test_caption_colors_ignore_a_white_background():
    # A red product photographed on white: the product is red, the photo mostly white.
    pixels = np.full((224, 224, 3), 255, np.uint8)
    pixels[80:150, 60:170] = (200, 20, 30)
    pixels[150:160, 60:170] = (250, 250, 250)  # a white sole
    assert [name for name, _ in dominant_colors(pixels)] == ["red"]
    caption = LabelColorCaptioner(threshold=0.5).caption(np.full(1000, 0.001), pixels)
    assert caption.text == "red product"  # no confident label: the fallback word


def test_tflite_agrees_with_keras_on_real_photos(keras_model, tflite_model, photos):
    assert len(photos) >= 20
    images = [encode(photo) for photo in photos.values()]
    keras_out, tflite_out = embed(keras_model, images), embed(tflite_model, images)
    cosine = np.sum(keras_out.embeddings * tflite_out.embeddings, axis=1)
    assert cosine.min() >= 0.999, dict(zip(photos, cosine))
    assert tflite_model.info.fingerprint == keras_model.info.fingerprint




@pytest.fixture(scope="module")
def edge_cases(photos):
    return decode_edge_cases(photos)


@pytest.mark.parametrize("name", [
    "cmyk.jpg", "sixteen_bit.png", "palette_transparent.png", "animated.gif", "exif_rotated.jpg",
    "alpha.png", "photo.webp", "photo.bmp", "photo.tiff", "truncated.jpg", "empty.jpg",
    "text.jpg", "huge.png"])
def test_every_decode_edge_case(edge_cases, name):
    data, expected = edge_cases[name]
    if expected != "ok":
        with pytest.raises(pp.ImageError) as raised:
            pp.preprocess_image(data, SPEC)
        assert type(raised.value).__name__ == expected
        assert str(raised.value)  # a message a person can read
        return
    result = pp.preprocess_image(data, SPEC)
    assert result.pixels.shape == (224, 224, 3) and result.pixels.dtype == np.uint8


def test_decoded_edge_cases_look_like_the_original(keras_model, photos, edge_cases):
    """Each format decodes to the same picture: its embedding matches the plain JPEG's."""
    reference = embed(keras_model, [encode(photos["coffee"], quality=95)]).embeddings[0]
    for name in ("cmyk.jpg", "animated.gif", "exif_rotated.jpg", "photo.webp", "photo.bmp",
                 "photo.tiff"):
        vector = embed(keras_model, [edge_cases[name][0]]).embeddings[0]
        assert float(vector @ reference) >= 0.9, name


def test_exif_orientation_reports_upright_size(edge_cases):
    result = pp.preprocess_image(edge_cases["exif_rotated.jpg"][0], SPEC)
    assert (result.width, result.height) == (600, 400)


def test_sixteen_bit_png_keeps_its_tones(edge_cases, photos):
    data, _ = edge_cases["sixteen_bit.png"]
    assert data[24] == 16  # PNG IHDR bit depth: really a 16-bit file
    pixels, _, _ = pp.decode_image(data, 224)
    np.testing.assert_array_equal(pixels[..., 0], photos["camera"][..., 0])


def test_transparency_is_composited_on_white(edge_cases):
    pixels, _, _ = pp.decode_image(edge_cases["alpha.png"][0], 224)
    assert np.all(pixels[:40] == 255)
    palette, _, _ = pp.decode_image(edge_cases["palette_transparent.png"][0], 224)
    assert np.any(np.all(palette == 255, axis=-1))


def test_large_jpeg_is_decoded_at_reduced_size(photos):
    big = np.asarray(pp.Image.fromarray(photos["retina"]).resize((2800, 2800)))
    pixels, width, height = pp.decode_image(encode(big, quality=90), 224)
    assert (width, height) == (2800, 2800)
    assert pixels.shape == (350, 350, 3)  # DCT-scaled to 1/8, still large enough


def test_jpeg_is_decoded_at_the_smallest_power_of_two_scale_that_covers_the_input(photos):
    """800 px decodes at 1/2 (400 px: libjpeg-turbo's SIMD scales are 1/2, 1/4, 1/8), never
    below the 224 px the model needs, and the result matches resizing the full-size decode
    (pixels within 1 level on average)."""
    def catalog_jpeg(photo, size):
        return encode(np.asarray(pp.Image.fromarray(photo).resize(size, pp.Image.BICUBIC)),
                      quality=90)

    square = catalog_jpeg(photos["astronaut"], (800, 800))
    assert pp.decode_image(square, 224)[0].shape == (400, 400, 3)
    wide = catalog_jpeg(photos["chelsea"], (800, 600))  # auto may crop: short side >= 224
    assert pp.decode_image(wide, 224)[0].shape == (300, 400, 3)
    small = catalog_jpeg(photos["coffee"], (1000, 1000))  # 1/4 gives 250 px, enough
    assert pp.decode_image(small, 224)[0].shape == (250, 250, 3)
    for name in ("astronaut", "camera", "chelsea", "coffee"):
        data = catalog_jpeg(photos[name], (800, 800))
        full = pp.Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224),
                                                                      pp.Image.BICUBIC)
        pixels = pp.preprocess_image(data, SPEC).pixels
        assert np.abs(pixels.astype(int) - np.asarray(full, int)).mean() < 1.0, name


def test_resize_is_pillows_bicubic_within_rounding(photos):
    """The SIMD resizer computes Pillow's antialiased bicubic (Catmull-Rom) filter, down
    and up, to within rounding of Pillow's own fixed-point arithmetic."""
    for name, size in (("coffee", (224, 168)), ("chelsea", (224, 224)), ("camera", (640, 600))):
        photo = photos[name] if photos[name].ndim == 3 else np.stack([photos[name]] * 3, -1)
        ours = pp.resize(photo, *size).astype(int)
        pillow = np.asarray(pp.Image.fromarray(photo).resize(size, pp.Image.BICUBIC), int)
        difference = np.abs(ours - pillow)
        assert ours.shape == pillow.shape
        assert difference.mean() < 0.3 and np.percentile(difference, 99.9) <= 2, name


def test_grayscale_and_progressive_jpegs_decode_to_rgb(photos):
    gray = encode(photos["camera"][..., 0], quality=90)
    pixels, _, _ = pp.decode_image(gray, 224)
    assert pixels.shape[-1] == 3 and np.array_equal(pixels[..., 0], pixels[..., 2])
    progressive = encode(photos["coffee"], quality=90, progressive=True)
    assert pp.preprocess_image(progressive, SPEC).pixels.shape == (224, 224, 3)


def test_auto_fit_pads_plain_backgrounds_and_crops_full_frames(photos):
    product = np.full((300, 600, 3), 250, np.uint8)
    product[100:200, 200:400] = (10, 60, 200)
    padded = pp.preprocess_image(encode(product, "PNG"), SPEC)
    assert padded.content_box == (0, 56, 224, 168)  # letterboxed, the whole product kept
    cropped = pp.preprocess_image(encode(photos["coffee"]), SPEC)
    assert cropped.content_box == (0, 0, 224, 224)


def test_a_saved_keras_model_loads_by_path(keras_model, tmp_path, photos, model_cache):
    path = str(tmp_path / "mine.keras")
    keras_model.model.save(path)
    mine = load_model(path, runtime="keras", cache_dir=model_cache)
    assert mine.info.embedding_dim == 1280
    assert mine.info.preprocessing.input_size == 224
    batch = np.stack([pp.preprocess_image(encode(photos["coffee"]), mine.info.preprocessing).pixels])
    assert mine.predict(batch).embeddings.shape == (1, 1280)


def test_a_saved_sequential_model_loads_by_path(tmp_path, photos, model_cache):
    import keras

    tiny = keras.Sequential([keras.Input((224, 224, 3)), keras.layers.Conv2D(8, 3, strides=8),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(16)])
    path = str(tmp_path / "sequential.keras")
    tiny.save(path)
    mine = load_model(path, runtime="keras", cache_dir=model_cache)
    assert mine.info.embedding_dim == 16
    batch = np.stack([pp.preprocess_image(encode(photos["coffee"]), mine.info.preprocessing).pixels])
    assert mine.predict(batch).embeddings.shape == (1, 16)


def test_a_savedmodel_folder_loads_with_its_sidecar(keras_model, tmp_path, photos, model_cache):
    folder = tmp_path / "exported"
    keras_model.model.export(str(folder), format="tf_saved_model", verbose=False)
    (folder / "catalog_model.json").write_text(
        '{"name": "lite0-export", "preprocessing": {"scale": 0.0078125, "offset": -0.9921875}}')
    exported = load_model(str(folder), cache_dir=model_cache)
    assert exported.info.name == "lite0-export" and exported.info.embedding_dim == 1280
    images = [encode(photos["coffee"]), encode(photos["chelsea"])]
    cosine = np.sum(embed(exported, images).embeddings * embed(keras_model, images).embeddings, 1)
    assert cosine.min() >= 0.9999


def test_unknown_model_is_a_clear_error(model_cache):
    with pytest.raises(ModelLoadError, match="unknown model") as raised:
        load_model("resnet9000", cache_dir=model_cache)
    assert "efficientnet_lite2" in str(raised.value) and "\n" not in str(raised.value)


def test_tflite_pool_is_safe_to_call_from_many_threads(model_cache, photos):
    """Beam worker threads share one model: concurrent batches of different sizes must each
    get their own answers (one shared interpreter once mixed them up)."""
    from concurrent.futures import ThreadPoolExecutor

    model = load_model("efficientnet_lite0", runtime="tflite", cache_dir=model_cache, threads=1)
    pixels = np.stack([pp.preprocess_image(encode(photo), SPEC).pixels
                       for photo in list(photos.values())[:12]])
    batches = [pixels[:n] for n in (1, 5, 12, 3, 8, 2)] * 3
    expected = [model.predict(batch).embeddings for batch in batches]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda batch: model.predict(batch).embeddings, batches))
    for want, got in zip(expected, results):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert model.capacity == (os.cpu_count() or 1)


def test_auto_runtime_uses_the_gpu_when_there_is_one(monkeypatch):
    from models import loader

    monkeypatch.setattr(loader, "gpu_available", lambda: True)
    assert loader.resolve_runtime("auto") == "keras"
    monkeypatch.setattr(loader, "gpu_available", lambda: False)
    assert loader.resolve_runtime("auto") == "tflite"


def test_mixed_precision_embeddings_agree_with_float32(keras_model, photos, model_cache):
    mixed = load_model("efficientnet_lite0", runtime="keras", precision="mixed",
                       cache_dir=model_cache)
    assert mixed.info.fingerprint == keras_model.info.fingerprint
    images = [encode(photo) for photo in photos.values()]
    cosine = np.sum(embed(mixed, images).embeddings * embed(keras_model, images).embeddings, 1)
    assert cosine.min() >= 0.999
    assert mixed.model.get_layer("conv_stem").dtype_policy.compute_dtype == "float16"
    with pytest.raises(ModelLoadError, match="mixed precision"):
        load_model("efficientnet_lite0", runtime="tflite", precision="mixed", cache_dir=model_cache)


def test_tflite_embeddings_do_not_depend_on_batching_or_threads(model_cache, photos):
    """Byte-identical rebuilds rest on this: Beam batches items differently on every run."""
    pixels = np.stack([pp.preprocess_image(encode(photo), SPEC).pixels
                       for photo in photos.values()])
    one = load_model("efficientnet_lite0", runtime="tflite", cache_dir=model_cache, threads=1)
    two = load_model("efficientnet_lite0", runtime="tflite", cache_dir=model_cache, threads=2)
    whole = one.predict(pixels).embeddings
    in_threes = np.concatenate([one.predict(pixels[i:i + 3]).embeddings
                                for i in range(0, len(pixels), 3)])
    np.testing.assert_array_equal(whole, in_threes)
    np.testing.assert_array_equal(whole, two.predict(pixels).embeddings)
