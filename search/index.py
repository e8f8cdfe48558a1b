"""Open a published version (local or gs://), check it, and query all shards at once.

    index = PublishedIndex.open("gs://bucket/index")          # follows LATEST
    index.query_image(open("shoe.jpg", "rb").read(), k=10)    # same model as the build
    index.query_item("sku-123", k=10)                         # more like this
    index.query_text("red dress", k=10)                       # BM25 over captions, titles
    index.query_vector(vector, k=10)                          # merged over every shard

Shards on GCS are downloaded once into a local cache folder per version and checked against
the manifest's sha256 before use; Annoy then memory-maps them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import pyarrow.parquet as pq

from catalog_index import storage
from catalog_index.schema import (ANNOY_METRIC, LATEST_FILE, MANIFEST_FILE, SCHEMA_VERSION,
                                  join, version_dir)


class IndexIntegrityError(ValueError):
    """The version on storage is not what its manifest says (missing file, bad checksum)."""


class ModelMismatchError(ValueError):
    """The model at hand is not the one that built the index: its vectors would not match."""


# Metadata columns a text query searches, besides the passthrough columns.
TEXT_FIELDS = ("caption",)


@dataclass(frozen=True)
class Hit:
    item_id: str
    score: float  # cosine similarity, 1.0 = same direction
    metadata: dict


def _cache_root() -> str:
    from models.efficientnet_lite import default_cache_dir

    return os.path.join(default_cache_dir(), "indexes")


class PublishedIndex:
    def __init__(self, root: str, manifest: dict, local_dir: str):
        from annoy import AnnoyIndex

        self.root, self.manifest, self.local_dir = root, manifest, local_dir
        self._model = None
        self._text_index = None
        self.version_id = manifest["version_id"]
        self.dimension = manifest["model"]["embedding_dim"]
        self.shards = []
        self.rows: Dict[str, dict] = {}
        for shard in manifest["index"]["shards"]:
            annoy = AnnoyIndex(self.dimension, manifest["index"]["metric"])
            annoy.load(os.path.join(local_dir, shard["index_file"]))
            if annoy.get_n_items() != shard["items"]:
                raise IndexIntegrityError(
                    f"{shard['index_file']}: Annoy holds {annoy.get_n_items()} items, the "
                    f"manifest says {shard['items']}")
            rows = pq.read_table(os.path.join(local_dir, shard["metadata_file"])).to_pylist()
            by_annoy_id = {row["annoy_id"]: row for row in rows}
            self.shards.append((annoy, by_annoy_id, shard["search_k"]))
            self.rows.update((row["item_id"], row) for row in rows)

    @classmethod
    def open(cls, root: str, version: Optional[str] = None,
             cache_dir: Optional[str] = None) -> "PublishedIndex":
        """Open ``version``, or the one ``ROOT/LATEST`` names."""
        if version is None:
            latest = storage.read_optional_text(join(root, LATEST_FILE))
            if not latest:
                raise FileNotFoundError(f"{join(root, LATEST_FILE)}: no published version")
            version = latest.strip()
        folder = version_dir(root, version)
        try:
            manifest = json.loads(storage.read_text(join(folder, MANIFEST_FILE)))
        except FileNotFoundError:
            raise FileNotFoundError(f"{folder}: no manifest.json (not a complete version)") from None
        return cls.from_manifest(root, manifest, cache_dir)

    @classmethod
    def from_manifest(cls, root: str, manifest: dict,
                      cache_dir: Optional[str] = None) -> "PublishedIndex":
        """A version described by ``manifest`` (e.g. one being validated, not yet published)."""
        folder = version_dir(root, manifest["version_id"])
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise IndexIntegrityError(f"{folder}: schema_version {manifest.get('schema_version')}"
                                      f", this reader understands {SCHEMA_VERSION}")
        if manifest["index"]["metric"] != ANNOY_METRIC:
            raise IndexIntegrityError(f"{folder}: unexpected metric {manifest['index']['metric']}")
        local_dir = folder if not storage.is_gcs(folder) else os.path.join(
            cache_dir or _cache_root(), hashlib.sha256(folder.encode()).hexdigest()[:16])
        _fetch_and_verify(folder, local_dir, manifest)
        return cls(root, manifest, local_dir)

    def __len__(self) -> int:
        return len(self.rows)

    def item(self, item_id: str) -> dict:
        if item_id not in self.rows:
            raise KeyError(f"item_id {item_id!r} is not in version {self.version_id}")
        return self.rows[item_id]

    def vector(self, item_id: str) -> np.ndarray:
        row = self.item(item_id)
        annoy, _, _ = self.shards[row["shard"]]
        return np.asarray(annoy.get_item_vector(row["annoy_id"]), dtype=np.float32)

    def query_vector(self, vector: Sequence[float], k: int = 10, search_k: Optional[int] = None,
                     exclude: Sequence[str] = ()) -> List[Hit]:
        """The k nearest items over all shards, best first. Each shard is searched with the
        ``search_k`` the build tuned for the recall target, unless one is given."""
        vector = np.asarray(vector, dtype=np.float32)
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        wanted = k + len(exclude)
        hits = []
        for annoy, by_annoy_id, tuned_search_k in self.shards:
            ids, distances = annoy.get_nns_by_vector(
                vector, wanted, search_k=search_k or tuned_search_k, include_distances=True)
            hits.extend(Hit(by_annoy_id[i]["item_id"], 1.0 - d * d / 2.0, by_annoy_id[i])
                        for i, d in zip(ids, distances))
        excluded = set(exclude)
        hits = [hit for hit in hits if hit.item_id not in excluded]
        return sorted(hits, key=lambda hit: (-hit.score, hit.item_id))[:k]

    def query_item(self, item_id: str, k: int = 10) -> List[Hit]:
        """More like this: the k items nearest to an indexed item, the item itself left out."""
        return self.query_vector(self.vector(item_id), k, exclude=[item_id])

    def query_image(self, image: bytes, k: int = 10) -> List[Hit]:
        """Embed an image file's bytes exactly as the build did, then search."""
        from models.preprocessing import PreprocessingSpec, preprocess_image

        model = self.model()
        spec = PreprocessingSpec.from_dict(self.manifest["model"]["preprocessing"])
        pixels = preprocess_image(image, spec).pixels
        return self.query_vector(model.predict(pixels[None]).embeddings[0], k)

    def model(self, spec: Optional[str] = None, runtime: str = "auto"):
        """The model that built this version (or ``spec``), refused unless its fingerprint
        matches the manifest's."""
        if self._model is None or spec is not None:
            from models.loader import load_model

            built_with = self.manifest["model"]
            model = load_model(spec or self.manifest["pipeline_options"].get("model")
                               or built_with["name"], runtime)
            if model.info.fingerprint != built_with["fingerprint"]:
                raise ModelMismatchError(
                    f"model {model.info.name} has fingerprint {model.info.fingerprint[:12]}, "
                    f"but version {self.version_id} was built with {built_with['name']} "
                    f"({built_with['fingerprint'][:12]}); its vectors would not match")
            self._model = model
        return self._model

    def query_text(self, text: str, k: int = 10) -> List[Hit]:
        """BM25 over each item's caption and passthrough text (title, category, ...)."""
        if self._text_index is None:
            self._text_index = _TextIndex(list(self.rows.values()))
        return self._text_index.search(text, k)


class _TextIndex:
    def __init__(self, rows: List[dict]):
        import bm25s

        self.rows = rows
        passthrough = [name for name in (rows[0] if rows else {})
                       if name not in _NOT_TEXT and isinstance(rows[0].get(name), (str, type(None)))]
        documents = [" ".join(str(row.get(name) or "") for name in (*TEXT_FIELDS, *passthrough))
                     for row in rows]
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize(documents, stopwords="en", show_progress=False),
                             show_progress=False)

    def search(self, text: str, k: int) -> List[Hit]:
        import bm25s

        query = bm25s.tokenize([text], stopwords="en", show_progress=False)
        if not self.rows or not query.vocab:
            return []
        ids, scores = self.retriever.retrieve(query, k=min(k, len(self.rows)),
                                              show_progress=False)
        return [Hit(self.rows[i]["item_id"], float(score), self.rows[i])
                for i, score in zip(ids[0], scores[0]) if score > 0]


_NOT_TEXT = {"item_id", "shard", "annoy_id", "image_uri", "sha256", "width", "height",
             "labels", "colors", *TEXT_FIELDS}


def _fetch_and_verify(folder: str, local_dir: str, manifest: dict) -> None:
    """Make every shard's index and metadata file available under ``local_dir`` and check
    them against the manifest's sha256. A cached copy that no longer matches (the version
    was rebuilt with --replace) is downloaded again, once."""
    for shard in manifest["index"]["shards"]:
        for relative, digest in ((shard["index_file"], shard["sha256"]),
                                 (shard["metadata_file"], shard.get("metadata_sha256"))):
            local = os.path.join(local_dir, relative)
            remote = join(folder, relative)
            if storage.is_gcs(folder) and not _matches(local, digest):
                try:
                    storage.atomic_local_write(
                        local, lambda tmp, remote=remote: storage.download_file(remote, tmp))
                except Exception as error:
                    raise IndexIntegrityError(f"{remote}: {error}") from None
            if not os.path.exists(local):
                raise IndexIntegrityError(f"{remote} is missing")
            if not _matches(local, digest):
                raise IndexIntegrityError(f"{remote}: sha256 differs from the manifest")


def _matches(local: str, digest: Optional[str]) -> bool:
    if not os.path.exists(local):
        return False
    return digest is None or storage.sha256_of_file(local) == digest
