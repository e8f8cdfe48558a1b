"""write_query_model: the model that embeds query images, written into the version.

A reader embeds a query image with the build's model. With the model in the version as a
TFLite file (``model/model.tflite``, checksummed in the manifest's ``query_model`` entry),
a reader on any machine runs it with LiteRT: it needs neither TensorFlow, nor the model's
weights package, nor the build's conversion cache, and its vectors are the build's (the
build runs the same file on CPU). Models without a TFLite form (SavedModels, TF Hub
modules) get no file; their readers load the model as before.

One worker converts the model (once: the conversion is cached) and uploads the file.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from catalog_index import storage
from catalog_index.schema import QUERY_MODEL_FILE, join
from models.loader import has_tflite_form, load_model


def write_query_model(spec: str, version_dir: str, fingerprint: str) -> Optional[dict]:
    """Write the TFLite form of the model ``spec`` into the version; -> the manifest's
    ``query_model`` entry, or None when the model has no TFLite form."""
    if not has_tflite_form(spec):
        return None
    try:
        model = load_model(spec, "tflite", threads=1)
    except Exception as error:  # noqa: BLE001 (a .keras model TFLite cannot convert)
        logging.getLogger(__name__).warning(
            "%s: no TFLite form (%s: %s); readers will load the model itself", spec,
            type(error).__name__, error)
        return None
    if model.info.fingerprint != fingerprint:
        raise ValueError(f"model {spec} changed during the build: its fingerprint is "
                         f"{model.info.fingerprint[:12]} now, {fingerprint[:12]} at the start")
    storage.upload_file(model.tflite_path, join(version_dir, QUERY_MODEL_FILE))
    return {"file": QUERY_MODEL_FILE, "format": "tflite",
            "sha256": storage.sha256_of_file(model.tflite_path),
            "bytes": os.path.getsize(model.tflite_path), "fingerprint": fingerprint}
