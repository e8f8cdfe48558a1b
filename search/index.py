"""Open a published version (local or gs://), check it, and query all shards at once.

    index = PublishedIndex.open("gs://bucket/index")          # follows LATEST
    index.query_image(open("shoe.jpg", "rb").read(), k=10)    # same model as the build
    index.query_item("sku-123", k=10)                         # more like this
    index.query_text("red dress", k=10)                       # BM25 over captions, titles
    index.query_vector(vector, k=10)                          # merged over every shard

Opening a version checks every file it reads against the manifest's sha256 (files on GCS
are downloaded once into a local cache folder per version), once: the cache remembers what
it checked, and a later open trusts a file whose size, times and inode have not changed
since (search/cache.py). It then takes hold of all of them: Annoy memory-maps the shards,
the text index, the changes files and the query model are memory-mapped, each shard's
metadata is memory-mapped from an Arrow copy the cache keeps of its Parquet (the page
cache holds it, not the process), the projection is read into memory. From then on the
reader needs nothing from the version's folder (or the cache): pruning old versions, or
cleaning the cache, never breaks a reader that is already open (on POSIX, a mapped file
outlives its name).

A query searches the shards side by side, on a pool of threads as many as the cores
(Annoy releases the GIL while it searches), and merges their hits into one top-k, best
first, ties by item_id.

Query images are embedded with the version's own model file (``model/model.tflite``) on
LiteRT, without TensorFlow; versions without one (older builds, SavedModel and TF Hub
models) load the build's model by name, which needs TensorFlow and the model's package.
"""

from __future__ import annotations

import bisect
import collections
import functools
import itertools
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from catalog_index import versions
from catalog_index.schema import (ANNOY_METRIC, SCHEMA_VERSION, InvalidVersionId,
                                  check_version_file, shard_of, version_dir)
from catalog_index.text_index import TEXT_DIR, TextIndex, analyze, text_columns
from models.captioner import COLOR_NAMES, COLOR_PHRASES
from search.cache import CacheError, VersionCache


class IndexIntegrityError(ValueError):
    """The version on storage is not what its manifest says (missing file, bad checksum)."""


class ModelMismatchError(ValueError):
    """The model at hand is not the one that built the index: its vectors would not match."""


# Image + text queries: how much the text counts, and how many candidates each side brings.
DEFAULT_TEXT_WEIGHT = 0.5
IMAGE_CANDIDATES = 1_000
TEXT_CANDIDATES = 2_000
# Product words most nearest images share join the query's terms at half their weight.
FEEDBACK_NEIGHBOURS, FEEDBACK_SHARE, FEEDBACK_WEIGHT = 20, 0.5, 0.5
_COLOR_TERMS = frozenset(term for name in (*COLOR_NAMES, *COLOR_PHRASES.values())
                         for term in analyze(name))


@dataclass(frozen=True)
class Hit:
    item_id: str
    score: float  # cosine similarity, 1.0 = same direction
    metadata: dict


def _cache_root() -> str:
    from models.efficientnet_lite import default_cache_dir

    return os.path.join(default_cache_dir(), "indexes")


@dataclass
class Shard:
    """One shard as the reader holds it: the memory-mapped Annoy index and the shard's
    metadata as an Arrow table (memory-mapped) whose row n is the item with Annoy id n
    (sorted by item_id)."""
    annoy: object
    metadata: pa.Table
    search_k: int

    def row(self, annoy_id: int) -> dict:
        # Column by column, from columns looked up once: a third of the time of a one-row
        # slice's to_pylist, which was half of a query's time at 256 dimensions.
        return {name: column[annoy_id].as_py() for name, column in self._columns}

    @functools.cached_property
    def _columns(self) -> list:
        return list(zip(self.metadata.column_names, self.metadata.columns))

    @functools.cached_property
    def item_ids(self) -> pa.ChunkedArray:
        return self.metadata.column("item_id")

    def item_id(self, annoy_id: int) -> str:
        return self.item_ids[annoy_id].as_py()

    def find(self, item_id: str) -> Optional[int]:
        """The Annoy id of ``item_id``, by binary search over the sorted item_id column."""
        ids = self.item_ids
        found = bisect.bisect_left(ids, item_id, key=lambda scalar: scalar.as_py())
        return found if found < len(ids) and ids[found].as_py() == item_id else None


def _cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# Schema 3 adds what this reader does not need to search (embeddings' source_stamp) and
# changes/, which :meth:`PublishedIndex.changes` reads where it exists.
READABLE_SCHEMA_VERSIONS = (2, 3, SCHEMA_VERSION)


class PublishedIndex:
    def __init__(self, root: str, manifest: dict, cache: VersionCache):
        from annoy import AnnoyIndex

        self.root, self.manifest, self.local_dir = root, manifest, cache.local_dir
        local_dir = self.local_dir
        self._model = None
        self._lock = threading.Lock()
        self.version_id = manifest["version_id"]
        # The Annoy files' width: a projection's (schema 4), else the model's.
        self.dimension = manifest["index"].get("dimension") or manifest["model"]["embedding_dim"]
        self.projection = None
        if manifest.get("projection"):
            from models.projection import Projection

            with open(os.path.join(local_dir, manifest["projection"]["file"]), "rb") as stream:
                try:
                    self.projection = Projection.from_bytes(stream.read())
                except ValueError as error:
                    raise IndexIntegrityError(
                        f"{manifest['projection']['file']}: {error}") from None
            if self.projection.dims != self.dimension:
                raise IndexIntegrityError(f"{manifest['projection']['file']}: "
                                          f"{self.projection.dims} dimensions, the index has "
                                          f"{self.dimension}")

        def load(shard: dict) -> Shard:
            annoy = AnnoyIndex(self.dimension, manifest["index"]["metric"])
            annoy.load(os.path.join(local_dir, shard["index_file"]))
            if annoy.get_n_items() != shard["items"]:
                raise IndexIntegrityError(
                    f"{shard['index_file']}: Annoy holds {annoy.get_n_items()} items, the "
                    f"manifest says {shard['items']}")
            metadata = cache.metadata_table(shard["metadata_file"], shard.get("metadata_sha256"))
            return Shard(annoy, metadata, shard["search_k"])

        # Side by side: on a first open each shard's metadata is copied to Arrow once.
        with ThreadPoolExecutor(max_workers=_cores()) as pool:
            self.shards: List[Shard] = list(pool.map(load, manifest["index"]["shards"]))
        cache.save()
        # What the queries and changes() read later, held now (see the module's doc).
        self._text_index = self._open_text_index() if manifest.get("text_index") else None
        self._changes = [_map(os.path.join(local_dir, shard["changes_file"]))
                         for shard in manifest["index"]["shards"]] \
            if _has_changes(manifest) else None
        query_model = manifest.get("query_model")
        self._query_model_path = os.path.join(local_dir, query_model["file"]) \
            if query_model else None
        self._query_model_file = _map(self._query_model_path) if query_model else None
        self._query_model_status = _identity(self._query_model_path) if query_model else None
        # The shards in one group per core, each group searched on a thread of its own
        # (the caller's thread takes the first): one task per core and query, not per shard.
        groups = np.array_split(np.arange(len(self.shards)),
                               max(1, min(_cores(), len(self.shards))))
        self._groups = [group.tolist() for group in groups if len(group)]
        self._pool = ThreadPoolExecutor(len(self._groups) - 1, "shard-search") \
            if len(self._groups) > 1 else None
        self.closed = False

    @classmethod
    def open(cls, root: str, version: Optional[str] = None,
             cache_dir: Optional[str] = None) -> "PublishedIndex":
        """Open ``version``, or the one ``ROOT/LATEST`` names."""
        try:
            if version is None:
                latest = versions.read_latest(root)
                if latest.version_id is None:
                    raise FileNotFoundError(f"{latest.path}: no published version")
                version = latest.version_id
            manifest = versions.read_manifest(root, version)
        except (versions.VersionError, InvalidVersionId) as error:
            raise IndexIntegrityError(str(error)) from None
        return cls.from_manifest(root, manifest, cache_dir)

    @classmethod
    def from_manifest(cls, root: str, manifest: dict,
                      cache_dir: Optional[str] = None) -> "PublishedIndex":
        """A version described by ``manifest`` (e.g. one being validated, not yet published)."""
        try:
            return cls._from_manifest(root, manifest, cache_dir)
        except KeyError as error:  # a manifest without a key every version has
            raise IndexIntegrityError(f"{root}: the manifest of version "
                                      f"{manifest.get('version_id')!r} has no {error}") from None

    @classmethod
    def _from_manifest(cls, root: str, manifest: dict, cache_dir: Optional[str]):
        folder = version_dir(root, manifest["version_id"])
        if manifest.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
            raise IndexIntegrityError(f"{folder}: schema_version {manifest.get('schema_version')}"
                                      f", this reader understands {READABLE_SCHEMA_VERSIONS}")
        if manifest["index"]["metric"] != ANNOY_METRIC:
            raise IndexIntegrityError(f"{folder}: unexpected metric {manifest['index']['metric']}")
        cache = VersionCache(folder, cache_dir or _cache_root())
        try:
            _fetch_and_verify(cache, manifest)
            return cls(root, manifest, cache)
        except CacheError as error:
            raise IndexIntegrityError(str(error)) from None

    def close(self) -> None:
        """Let go of the version: the shard pool is shut down, the Annoy files unloaded and
        every other mapping dropped, so that its pages and (once deleted) its files are
        freed. The reader answers nothing after this; whoever closes it must know that no
        query is still running on it (``catalog-index serve`` counts them)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            for shard in self.shards:
                shard.annoy.unload()
            self.shards, self._groups, self._pool = [], [], None
            for mapped in (*(self._changes or ()), self._query_model_file):
                if isinstance(mapped, mmap.mmap):
                    mapped.close()
            self._changes = self._query_model_file = None
            self._text_index = self._model = None
            self.closed = True

    def changes(self) -> pa.Table:
        """What changed since the version published before this one: a table of
        ``item_id`` and ``change`` (added, removed, image_changed, metadata_changed), sorted
        by item_id. A version's first build lists every item as added."""
        if self._changes is None:
            raise IndexIntegrityError(f"version {self.version_id} has no changes/ (schema "
                                      f"{self.manifest.get('schema_version')})")
        return pa.concat_tables([pq.read_table(pa.BufferReader(pa.py_buffer(mapped)))
                                 for mapped in self._changes]).sort_by("item_id")

    def __len__(self) -> int:
        return sum(shard.metadata.num_rows for shard in self.shards)

    def item_ids(self) -> Iterator[str]:
        """Every indexed item_id, shard by shard."""
        for shard in self.shards:
            for chunk in shard.metadata.column("item_id").chunks:
                yield from chunk.to_pylist()

    def _locate(self, item_id: str):
        """-> (Shard, annoy_id) of an indexed item; KeyError if it is not in the version."""
        shard = self.shards[shard_of(item_id, len(self.shards))] if self.shards else None
        annoy_id = shard.find(item_id) if shard is not None and item_id is not None else None
        if annoy_id is None:
            raise KeyError(f"item_id {item_id!r} is not in version {self.version_id}")
        return shard, annoy_id

    def item(self, item_id: str) -> dict:
        shard, annoy_id = self._locate(item_id)
        return shard.row(annoy_id)

    def vector(self, item_id: str) -> np.ndarray:
        shard, annoy_id = self._locate(item_id)
        return np.asarray(shard.annoy.get_item_vector(annoy_id), dtype=np.float32)

    def query_vector(self, vector: Sequence[float], k: int = 10, search_k: Optional[int] = None,
                     exclude: Sequence[str] = ()) -> List[Hit]:
        """The k nearest items over all shards, best first. Each shard is searched with the
        ``search_k`` the build tuned for the recall target, unless one is given."""
        return [Hit(item_id, score, self.shards[shard].row(annoy_id))
                for score, item_id, shard, annoy_id in self._nearest(vector, k, search_k, exclude)]

    def _nearest(self, vector: Sequence[float], k: int, search_k: Optional[int] = None,
                 exclude: Sequence[str] = ()) -> List[tuple]:
        """-> [(cosine, item_id, shard number, annoy_id)] of the k nearest items, best first
        (ties by item_id): the first k of every shard's k + len(exclude) nearest, merged."""
        vector = self.in_index_space(vector)
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        wanted = k + len(exclude)
        query = vector.tolist()  # Annoy reads a list faster than an array, to the same floats
        found = self._each_shard(lambda shard: shard.annoy.get_nns_by_vector(
            query, wanted, search_k=search_k or shard.search_k, include_distances=True))
        counts = [len(ids) for ids, _ in found]
        total = sum(counts)
        numbers = np.repeat(np.arange(len(found)), counts)
        annoy_ids = np.fromiter(itertools.chain.from_iterable(ids for ids, _ in found),
                                np.int64, total)
        distances = np.fromiter(itertools.chain.from_iterable(d for _, d in found),
                                np.float64, total)
        scores = 1.0 - distances * distances / 2.0  # the cosine, as Python floats would give it
        # Only the hits that can make the top k get their item_id: those scoring at least
        # the wanted-th best score (ties included). Any other hit scores below all of
        # them, and the excluded items are at most len(exclude) of them.
        chosen = np.flatnonzero(scores >= np.partition(scores, total - wanted)[total - wanted]) \
            if total > wanted else np.arange(total)
        hits = [(score, self.shards[number].item_id(annoy_id), number, annoy_id)
                for score, number, annoy_id in zip(scores[chosen].tolist(),
                                                   numbers[chosen].tolist(),
                                                   annoy_ids[chosen].tolist())]
        excluded = set(exclude)
        return sorted((hit for hit in hits if hit[1] not in excluded),
                      key=lambda hit: (-hit[0], hit[1]))[:k]

    def _each_shard(self, search: Callable[[Shard], object]) -> list:
        """``search(shard)`` for every shard, in shard order; the groups of shards side by
        side, the first on the calling thread."""
        def run(group):
            return [search(self.shards[number]) for number in group]

        if self._pool is None:
            return run(self._groups[0]) if self._groups else []
        pending = [self._pool.submit(run, group) for group in self._groups[1:]]
        first = run(self._groups[0])
        return first + [found for future in pending for found in future.result()]

    def in_index_space(self, vector: Sequence[float]) -> np.ndarray:
        """A vector as the index holds them: a model vector is projected (when the version
        has a projection); one of the index's width is taken as it is."""
        vector = np.asarray(vector, dtype=np.float32)
        if self.projection is not None and vector.shape[-1] == self.projection.input_dim \
                and vector.shape[-1] != self.dimension:
            return self.projection.apply(vector)
        return vector

    def query_item(self, item_id: str, k: int = 10) -> List[Hit]:
        """More like this: the k items nearest to an indexed item, the item itself left out."""
        return self.query_vector(self.vector(item_id), k, exclude=[item_id])

    def query_image(self, image: bytes, k: int = 10) -> List[Hit]:
        """Embed an image file's bytes exactly as the build did, then search."""
        return self.query_vector(self.embed_image(image), k)

    def embed_image(self, image: bytes) -> np.ndarray:
        """An image file's vector in the index's space: embedded exactly as the build did,
        and projected as the build projected the catalog's."""
        from models.preprocessing import PreprocessingSpec, preprocess_image

        model = self.model()
        spec = PreprocessingSpec.from_dict(self.manifest["model"]["preprocessing"])
        pixels = preprocess_image(image, spec).pixels
        vector = model.predict(pixels[None]).embeddings[0]
        return vector if self.projection is None else self.projection.apply(vector)

    def query(self, image: Optional[bytes] = None, text: Optional[str] = None, k: int = 10,
              text_weight: float = DEFAULT_TEXT_WEIGHT, vector: Optional[np.ndarray] = None,
              exclude: Sequence[str] = ()) -> List[Hit]:
        """Image, text, or both ("this shoe, but in red"). ``vector`` stands in for an image
        already embedded.

        With both, each candidate scores ``(1 - text_weight) * cosine + text_weight *
        coverage``, best first (that is its ``score``): cosine is its image similarity,
        coverage the idf-weighted share of the query's terms its title, category or caption
        holds (:meth:`TextIndex.coverage`). The query's terms are the text's, plus, at
        FEEDBACK_WEIGHT, the product words that most of the image's nearest items share
        (pseudo-relevance feedback, :meth:`product_terms`): "red" with the photo of a coat
        asks for a red coat first, then red things like it, then coats. The candidates are
        the IMAGE_CANDIDATES nearest images (their cosine is Annoy's) and the
        TEXT_CANDIDATES documents that cover the terms best (ties broken by BM25)."""
        if image is not None:
            vector = self.embed_image(image)
        if vector is None:
            if text is None:
                raise ValueError("query needs an image, a vector or a text")
            return self.query_text(text, k)
        if not text or not analyze(text):
            return self.query_vector(vector, k, exclude=exclude)
        vector = self.in_index_space(vector)
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        text_index = self._text()
        nearest = self._nearest(vector, IMAGE_CANDIDATES, exclude=exclude)
        terms = {term: FEEDBACK_WEIGHT for term in self.product_terms(
            [self.shards[shard].row(annoy_id)
             for _, _, shard, annoy_id in nearest[:FEEDBACK_NEIGHBOURS]])}
        terms.update({term: 1.0 for term in analyze(text)})
        coverage = text_index.coverage(terms)
        # item_id -> (shard number, annoy_id, cosine: known for the nearest images)
        candidates = {item_id: (shard, annoy_id, cosine)
                      for cosine, item_id, shard, annoy_id in nearest}
        excluded = set(exclude)
        for shard, annoy_id in text_index.best_covered(coverage, terms, TEXT_CANDIDATES):
            item_id = self.shards[shard].item_id(annoy_id)
            if item_id not in excluded and item_id not in candidates:
                stored = np.asarray(self.shards[shard].annoy.get_item_vector(annoy_id),
                                    np.float32)
                cosine = float(stored @ vector) / max(float(np.linalg.norm(stored)), 1e-12)
                candidates[item_id] = (shard, annoy_id, cosine)
        fused = [((1 - text_weight) * cosine
                  + text_weight * float(coverage[text_index.document(shard, annoy_id)]),
                  item_id, shard, annoy_id)
                 for item_id, (shard, annoy_id, cosine) in candidates.items()]
        fused.sort(key=lambda hit: (-hit[0], hit[1]))  # best first, ties by item_id
        return [Hit(item_id, score, self.shards[shard].row(annoy_id))
                for score, item_id, shard, annoy_id in fused[:k]]

    def product_terms(self, rows: Sequence[dict]) -> List[str]:
        """The terms (not color words) of the caption, title, category or other text column
        that at least FEEDBACK_SHARE of the metadata ``rows`` have: what those items are, in
        the catalog's words."""
        names = text_columns(self.shards[0].metadata.schema) if self.shards else []
        counts = collections.Counter()
        for row in rows:
            counts.update({term for name in names for term in analyze(row.get(name))})
        return sorted(term for term, count in counts.items()
                      if count >= FEEDBACK_SHARE * len(rows) and term not in _COLOR_TERMS)

    def model(self, spec: Optional[str] = None, runtime: str = "auto"):
        """The model query images are embedded with: the version's own model file where it
        has one (run with LiteRT: no TensorFlow, no model package, no cache); else, or with
        ``spec`` or another ``runtime``, the model that built this version loaded by name
        (or ``spec``), refused unless its fingerprint matches the manifest's."""
        with self._lock:  # concurrent first queries load the model once
            if self._model is None or spec is not None or runtime != "auto":
                own = self._query_model_file is not None and spec is None and runtime == "auto"
                self._model = self._version_model() if own else self._load_model(spec, runtime)
            return self._model

    def _version_model(self):
        from models.loader import ModelInfo, TFLiteEmbeddingModel
        from models.preprocessing import PreprocessingSpec

        built_with, entry = self.manifest["model"], self.manifest["query_model"]
        if entry.get("fingerprint") != built_with["fingerprint"]:
            raise ModelMismatchError(
                f"{entry['file']} holds model {str(entry.get('fingerprint'))[:12]}, but "
                f"version {self.version_id} was built with {built_with['name']} "
                f"({built_with['fingerprint'][:12]}); its vectors would not match")
        info = ModelInfo(name=built_with["name"], fingerprint=built_with["fingerprint"],
                         embedding_dim=built_with["embedding_dim"], runtime="tflite",
                         preprocessing=PreprocessingSpec.from_dict(built_with["preprocessing"]))
        if _identity(self._query_model_path) == self._query_model_status:
            # The file mapped at open, still in place: LiteRT maps it itself, so processes
            # that open the same version share its pages (catalog-index serve's workers).
            return TFLiteEmbeddingModel(self._query_model_path, info)
        return TFLiteEmbeddingModel(None, info, model_content=bytes(self._query_model_file))

    def _load_model(self, spec: Optional[str], runtime: str):
        from models.loader import load_model
        from models.native_logs import quiet_native_logs

        built_with = self.manifest["model"]
        with quiet_native_logs():  # TensorFlow's import banners
            model = load_model(spec or self.manifest["pipeline_options"].get("model")
                               or built_with["name"], runtime)
        if model.info.fingerprint != built_with["fingerprint"]:
            raise ModelMismatchError(
                f"model {model.info.name} has fingerprint {model.info.fingerprint[:12]}, "
                f"but version {self.version_id} was built with {built_with['name']} "
                f"({built_with['fingerprint'][:12]}); its vectors would not match")
        return model

    def query_text(self, text: str, k: int = 10) -> List[Hit]:
        """BM25 over each item's caption and text columns (title, category, ...), with the
        text index the build wrote."""
        return [Hit(row["item_id"], score, row) for row, score in (
            (self.shards[shard].row(annoy_id), score)
            for shard, annoy_id, score in self._text().search(text, k))]

    def _text(self) -> TextIndex:
        if self._text_index is None:
            raise IndexIntegrityError(f"version {self.version_id} has no text index (it was "
                                      "built before text indexes were): rebuild it")
        return self._text_index

    def _open_text_index(self) -> TextIndex:
        return TextIndex(os.path.join(self.local_dir, TEXT_DIR),
                         [shard["items"] for shard in self.manifest["index"]["shards"]])


def _has_changes(manifest: dict) -> bool:
    """Whether the version has changes/ (schema 3 on)."""
    return all(shard.get("changes_file") for shard in manifest["index"]["shards"])


def _map(path: str):
    """A whole file, read-only and memory-mapped, holding no file descriptor: the mapping
    outlives the file's name (deleted or replaced)."""
    with open(path, "rb") as stream:
        if not os.fstat(stream.fileno()).st_size:
            return b""  # mmap refuses an empty file
        return mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)


def _identity(path: str) -> Optional[tuple]:
    """What says a file is still the one mapped: device, inode, size, mtime (None: gone)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def _fetch_and_verify(cache: VersionCache, manifest: dict) -> None:
    """Make every file of the version the reader reads (shards' index, metadata and
    changes, the text index, the projection, the query model) available under the cache's
    ``local_dir`` and checked against the manifest's sha256 (search/cache.py). A cached
    copy that no longer matches (the version was rebuilt with --replace) is downloaded
    again, once."""
    files = [(entry["file"], entry["sha256"])
             for entry in (manifest.get("text_index") or {}).get("files", [])]
    for entry in (manifest.get("projection"), manifest.get("query_model")):
        if entry:
            files.append((entry["file"], entry["sha256"]))
    for shard in manifest["index"]["shards"]:
        files += [(shard["index_file"], shard["sha256"]),
                  (shard["metadata_file"], shard.get("metadata_sha256"))]
        if _has_changes(manifest):
            files.append((shard["changes_file"], shard.get("changes_sha256")))
    for relative, _ in files:
        try:
            check_version_file(relative)
        except InvalidVersionId as error:
            raise IndexIntegrityError(f"{cache.folder}/manifest.json: {error}") from None
    cache.fetch_and_verify(files)
