"""The artifact contract: the one place that names a version's files and defines the Arrow
schemas of its Parquet files, the version-id grammar and the shard hash.

Writers (transforms/) and readers (search/) both import this module for those. The
manifest's keys are written by transforms/validate.py (and the stages whose entries it
gathers) and read through catalog_index/versions.py; docs/architecture.md lists them.

Layout::

    <root>/versions/<version_id>/manifest.json          written last inside the version
    <root>/versions/<version_id>/index/shard-00000-of-00008.ann
    <root>/versions/<version_id>/metadata/part-00000-of-00008.parquet
    <root>/versions/<version_id>/embeddings/part-00000-of-00008.parquet
    <root>/versions/<version_id>/errors/part-00000-of-00001.parquet
    <root>/versions/<version_id>/changes/part-00000-of-00008.parquet
    <root>/versions/<version_id>/text/*                  BM25 text index (catalog_index.text_index)
    <root>/versions/<version_id>/model/model.tflite      the model query images are embedded with
    <root>/versions/<version_id>/report.json
    <root>/LATEST                                        the published version_id
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from typing import Optional

import pyarrow as pa

# 2: metadata columns caption_source and caption_confidence (captions in the catalog's words).
# 3: embeddings column source_stamp; changes/ (what changed since the previous version).
# 4: the Annoy files may hold projected vectors: manifest index.dimension, and projection
#    (the file that maps a model vector to the index's space; models/projection.py).
SCHEMA_VERSION = 4
ANNOY_METRIC = "angular"

MANIFEST_FILE = "manifest.json"
PROJECTION_FILE = "projection/projection.npz"
# The build's model as TFLite, for models that have that form (manifest ``query_model``:
# file, sha256, bytes, fingerprint; absent in older versions and for SavedModels). Optional,
# so it needs no schema version of its own: readers that do not know it ignore it.
QUERY_MODEL_FILE = "model/model.tflite"
REPORT_FILE = "report.json"
LATEST_FILE = "LATEST"
VERSIONS_DIR = "versions"

# Stages an item can fail in; "dedupe" rows are duplicates, counted apart from failures.
STAGES = ("read", "dedupe", "fetch", "decode", "embed", "caption")
DUPLICATE_STAGE = "dedupe"

_SCHEMA_METADATA = {b"schema_version": str(SCHEMA_VERSION).encode()}

LABEL_TYPE = pa.struct([("label", pa.string()), ("score", pa.float32())])
COLOR_TYPE = pa.struct([("name", pa.string()), ("fraction", pa.float32())])

# Passthrough catalog columns (title, category, ...) follow these, as strings.
METADATA_FIELDS = [
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("shard", pa.int32(), nullable=False),
    pa.field("annoy_id", pa.int32(), nullable=False),
    pa.field("image_uri", pa.string()),
    pa.field("sha256", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("caption", pa.string()),
    # "catalog" (a phrase of the item's own text), "learned" (predicted from its image in
    # the catalog's words) or "labels" (ImageNet labels and colors), and how sure (0..1).
    pa.field("caption_source", pa.string()),
    pa.field("caption_confidence", pa.float32()),
    pa.field("labels", pa.list_(LABEL_TYPE)),
    pa.field("colors", pa.list_(COLOR_TYPE)),
]
# Catalog columns with these names would shadow the build's own fields: they pass through
# renamed, with RENAMED_PREFIX in front ("caption" -> "catalog_caption"), never dropped.
RESERVED_COLUMNS = frozenset(field.name for field in METADATA_FIELDS) | {"passthrough", "__vector"}
RENAMED_PREFIX = "catalog_"


def passthrough_name(column: str) -> str:
    """The metadata column that carries the catalog column ``column``."""
    return RENAMED_PREFIX + column if column in RESERVED_COLUMNS else column

EMBEDDINGS_SCHEMA = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("sha256", pa.string()),
    pa.field("model_fingerprint", pa.string()),
    pa.field("vector", pa.list_(pa.float32())),
    # What the storage said about the image file when it was read, without its bytes:
    # "size=N mtime_ns=T" for a local file, "size=N crc32c=C md5=M" for a gs:// object.
    # The next incremental build re-reads an image only when its stamp differs.
    pa.field("source_stamp", pa.string()),
], metadata=_SCHEMA_METADATA)

# One row per item that differs from the previous published version: added, removed,
# image_changed (other image bytes), metadata_changed (same image, other metadata), or
# vector_changed (nothing else changed, but the index space did: a refitted projection, say,
# so its vector in the index is another; the manifest's index.space_changed says so too).
CHANGES = ("added", "removed", "image_changed", "metadata_changed", "vector_changed")
CHANGES_SCHEMA = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("change", pa.string(), nullable=False),
], metadata=_SCHEMA_METADATA)

ERRORS_SCHEMA = pa.schema([
    pa.field("item_id", pa.string()),
    pa.field("image_uri", pa.string()),
    pa.field("stage", pa.string()),
    pa.field("error_type", pa.string()),
    pa.field("message", pa.string()),
    # True for storage failures (timeouts, retries exhausted): the item was not at fault.
    pa.field("retryable", pa.bool_()),
], metadata=_SCHEMA_METADATA)


def metadata_schema(passthrough_columns=()) -> pa.Schema:
    """The metadata schema for a catalog with these passthrough columns (sorted)."""
    extra = [pa.field(name, pa.string()) for name in sorted(passthrough_columns)]
    return pa.schema(METADATA_FIELDS + extra, metadata=_SCHEMA_METADATA)


def join(*parts: str) -> str:
    """Join path parts for local paths and gs:// URIs alike."""
    return posixpath.join(*parts) if "://" in parts[0] else os.path.join(*parts)


# One grammar for version ids, wherever one is read or written (a build's --version-id,
# LATEST, query --version, rollback): a single folder name, never a path.
VERSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# What a manifest may name as a file of its version: a relative path below the version.
VERSION_FILE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")


class InvalidVersionId(ValueError):
    """A version id outside the grammar (it could name a folder outside the root)."""


def check_version_id(version_id) -> str:
    if not isinstance(version_id, str) or not VERSION_ID.fullmatch(version_id) \
            or ".." in version_id:
        raise InvalidVersionId(f"{str(version_id)[:80]!r} is not a version id (letters, "
                               "digits, '.', '_', '-', starting with a letter or digit; "
                               "128 at most)")
    return version_id


def check_version_file(relative) -> str:
    if not isinstance(relative, str) or not VERSION_FILE.fullmatch(relative) \
            or ".." in relative.split("/"):
        raise InvalidVersionId(f"{str(relative)[:80]!r} is not a file inside a version")
    return relative


def version_dir(root: str, version_id: str) -> str:
    """The folder of ``version_id`` under ``root``; the id is checked first."""
    return join(root, VERSIONS_DIR, check_version_id(version_id))


def shard_suffix(shard: int, num_shards: int) -> str:
    return f"{shard:05d}-of-{num_shards:05d}"


def index_file(shard: int, num_shards: int) -> str:
    return f"index/shard-{shard_suffix(shard, num_shards)}.ann"


def metadata_file(shard: int, num_shards: int) -> str:
    return f"metadata/part-{shard_suffix(shard, num_shards)}.parquet"


def embeddings_file(shard: int, num_shards: int) -> str:
    return f"embeddings/part-{shard_suffix(shard, num_shards)}.parquet"


def changes_file(shard: int, num_shards: int) -> str:
    return f"changes/part-{shard_suffix(shard, num_shards)}.parquet"


ERRORS_PREFIX = "errors/part"


def index_space(model_fingerprint: str, projection_sha256: Optional[str]) -> str:
    """The id of the space the Annoy files' vectors are in: the model's, projected by the
    projection file with this sha256 (None: not projected). Two versions whose vectors can
    be compared with each other have the same id (manifest ``index.space``)."""
    text = f"{model_fingerprint}:{projection_sha256 or 'none'}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def shard_of(item_id: str, num_shards: int) -> int:
    """Stable across runs, machines and Python versions (unlike ``hash()``)."""
    digest = hashlib.sha256(item_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards
