"""Read a legacy (non-zip) PyTorch ``state_dict`` file into NumPy arrays, without torch.

The legacy format written by ``torch.save(..., _use_new_zipfile_serialization=False)`` is
five things in a row on one stream: three small pickles (magic number, protocol version,
system info), the main pickle whose tensors point at storages by persistent id, a pickle
listing the storage keys in file order, then each storage's raw bytes behind an int64
element count. We unpickle with a whitelist of the few callables such a file names, so a
weights file can never execute code.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from typing import BinaryIO, Dict

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchWeightsError(ValueError):
    """The file is not a legacy torch state_dict this reader understands."""


@dataclass(frozen=True)
class _TensorRef:
    storage_key: str
    storage_offset: int
    shape: tuple
    strides: tuple


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_ignored):
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, stream: BinaryIO):
        super().__init__(stream)
        self.storage_dtypes: Dict[str, np.dtype] = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise TorchWeightsError(f"refusing to unpickle {module}.{name}")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel, _view = pid
        if kind != "storage":
            raise TorchWeightsError(f"unexpected persistent id kind {kind!r}")
        self.storage_dtypes[key] = np.dtype(_STORAGE_DTYPES[storage_type])
        return key


def load_legacy_state_dict(path: str) -> "collections.OrderedDict[str, np.ndarray]":
    """Return ``{name: array}`` in the file's order, each array C-contiguous."""
    with open(path, "rb") as stream:
        if pickle.load(stream) != LEGACY_MAGIC_NUMBER:
            raise TorchWeightsError(f"{path}: not a legacy torch file (bad magic number)")
        pickle.load(stream)  # protocol version
        pickle.load(stream)  # sys info
        unpickler = _StateDictUnpickler(stream)
        refs = unpickler.load()
        storage_keys = pickle.load(stream)
        storages = {}
        for key in storage_keys:
            dtype = unpickler.storage_dtypes[key]
            (count,) = struct.unpack("<q", stream.read(8))
            storages[key] = np.frombuffer(stream.read(count * dtype.itemsize), dtype=dtype)

    state = collections.OrderedDict()
    for name, ref in refs.items():
        flat = storages[ref.storage_key][ref.storage_offset:]
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat, shape=ref.shape, strides=[s * itemsize for s in ref.strides])
        state[name] = np.ascontiguousarray(view)
    return state
