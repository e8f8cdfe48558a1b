"""The plan of a build: everything decided before the pipeline runs, made once from the
options and the published version, and frozen. The checks that can fail fail here, in one
line, before any image is read: a catalog without the columns asked for, an output root
that cannot be written, a version id that exists, a LATEST or manifest that cannot be
read, a projection that cannot be used, a model that does not load.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import tempfile
from typing import List, NamedTuple, Optional

from apache_beam.options.pipeline_options import PipelineOptions

from catalog_index import storage, versions
from catalog_index.schema import (MANIFEST_FILE, SCHEMA_VERSION, InvalidVersionId,
                                  check_version_file, index_space, join, passthrough_name,
                                  version_dir)
from models import caption_transfer
from models.captioner import LabelColorCaptioner
from models.loader import ModelInfo, load_model
from models.projection import Projection
from pipelines.options import DEFAULT_LABEL_COLUMN, UsageError
from runners import registry
from transforms.read_catalog import catalog_columns


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """What a build is: its version, model, columns, projection start, the published
    version it follows (``previous``), whether it reuses that version's results, and its
    quality gate."""

    version_id: str
    version_dir: str
    source: str
    started_at: str
    model: dict  # the manifest's model entry
    model_info: ModelInfo
    index: dict  # n_trees, seed
    inference_threads: int
    options: dict  # every build option, as given
    passthrough_columns: List[str]
    text_columns: List[str]
    label_column: Optional[str]
    projection_settings: dict  # dims, label_column: what a later build compares
    projection_start: "ProjectionStart"
    index_width: int  # the index vectors' width that --max-shard-mb counts
    latest_token: object  # what LATEST held when the build started
    previous: Optional[dict]  # the published version (previous_version_summary)
    reuse: dict  # settings, from_version, full_build_reason
    gate: dict  # the quality gate's thresholds

    @property
    def previous_files(self) -> Optional[dict]:
        """Where the published version's files are, for the stages that read them."""
        return self.previous and {key: self.previous[key]
                                  for key in ("version_dir", "shards", "space")}

    def for_manifest(self) -> dict:
        """The plan as the Validate stage writes it into the manifest."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if field.name not in ("model_info", "projection_start")}


def default_version_id() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def plan_build(args, pipeline_options: PipelineOptions) -> BuildPlan:
    """Check inputs, read the published version, and load the model once (which also
    fills the conversion cache). Raises UsageError (and CatalogError, ModelLoadError,
    StorageError) for what cannot be built, before any work starts."""
    if args.output.startswith("gs://") is False and "://" in args.output:
        raise UsageError(f"--output {args.output}: only local paths and gs:// are supported")
    if storage.is_gcs(args.output) or storage.is_gcs(args.catalog):
        storage.gcs_client()  # fails now, in one line, when credentials are missing
    passthrough = catalog_columns(args.catalog)
    text_columns = choose_text_columns(args.text_columns, passthrough)
    if not storage.is_gcs(args.output):
        check_writable_folder(args.output)
    version_id = args.version_id or default_version_id()
    out_dir = version_dir(args.output, version_id)
    latest_version, latest_token = read_latest_version(args.output)
    if storage.exists(out_dir):
        if not args.replace:
            raise UsageError(f"version {version_id} already exists at {out_dir}; choose "
                             "another --version-id, or pass --replace to rebuild it")
        if version_id == latest_version:
            raise UsageError(f"version {version_id} is the published one (LATEST names it): "
                             "--replace would take it away from readers; build another "
                             "--version-id")
        storage.delete_tree(out_dir)
    # Workers choose their runtime on their own hardware (--runtime auto: Keras on a GPU,
    # TFLite on CPU). A remote runner's launcher has no GPU: it loads the model only to learn
    # its fingerprint and shape, which do not depend on the runtime.
    local = registry.is_local(pipeline_options)
    planning_runtime = "keras" if args.runtime == "auto" and not local else args.runtime
    model = load_model(args.model, planning_runtime, precision=args.precision)
    model_entry = model.info.to_manifest()
    if planning_runtime != args.runtime:
        model_entry["runtime"] = args.runtime
    previous = previous_version_summary(args.output, latest_version)
    settings = reuse_settings(model_entry, model.info.class_names, args)
    full_reason = why_full_build(args.full, previous, settings)
    label_column = choose_label_column(args.label_column, passthrough)
    projection_settings = {"dims": args.dims, "label_column": label_column}
    start = projection_start(args.projection_from, projection_settings,
                             None if full_reason else previous, model_entry["embedding_dim"])
    return BuildPlan(
        version_id=version_id, version_dir=out_dir, source=args.catalog,
        started_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        model=model_entry, model_info=model.info,
        index={"n_trees": args.n_trees, "seed": args.seed},
        inference_threads=args.inference_threads or registry.default_inference_threads(
            pipeline_options),
        options={key: value for key, value in sorted(vars(args).items())},
        passthrough_columns=passthrough, text_columns=text_columns, label_column=label_column,
        projection_settings=projection_settings, projection_start=start,
        # what --max-shard-mb counts: the projection's width (a fitted one's PCA part; its
        # LDA part adds labels - 1), else the model's
        index_width=start.projection.dims if start.projection else
        (args.dims or model_entry["embedding_dim"]),
        latest_token=latest_token, previous=previous,
        reuse={"settings": settings,
               "from_version": None if full_reason else previous["version_id"],
               "full_build_reason": full_reason},
        gate={"min_recall": args.min_recall, "max_failure_rate": args.max_failure_rate,
              "max_count_drop": args.max_count_drop,
              "max_precision_drop": args.max_precision_drop,
              "allow_model_change": args.allow_model_change})


class ProjectionStart(NamedTuple):
    """What a build's projection starts from: None (fit one on the sample), or one to keep
    (``refit_on_drift``: unless tonight's items drift from it); ``origin`` for the manifest."""

    projection: Optional[Projection] = None
    origin: Optional[dict] = None
    refit_on_drift: bool = False


def projection_start(projection_from: Optional[str], settings: dict,
                     previous: Optional[dict], embedding_dim: int) -> ProjectionStart:
    """The projection given by the user; else, in an incremental build, the published
    version's, when it was fitted with the same settings; else none (fit a new one)."""
    if projection_from:
        given = read_projection(projection_from, f"--projection-from {projection_from}",
                                "give another, or leave --projection-from out to fit one")
        if given.input_dim != embedding_dim:
            raise UsageError(f"--projection-from {projection_from}: it projects "
                             f"{given.input_dim}-d vectors, the model's are {embedding_dim}-d")
        return ProjectionStart(given, {"given": projection_from})
    entry = (previous or {}).get("projection")
    if not settings["dims"] or not entry or entry.get("settings") != settings or \
            entry.get("input_dim") != embedding_dim:
        return ProjectionStart()
    carried = read_projection(previous["version_dir"], f"version {previous['version_id']}")
    return ProjectionStart(carried, {"carried_from": previous["version_id"]},
                           refit_on_drift=True)


def read_projection(path: str, what: str, instead: str = "build with --full to fit a new "
                    "one") -> Projection:
    """A projection .npz file, or a version folder's projection (checked against the
    sha256 its manifest gives). Raises UsageError, saying what to do ``instead``."""
    try:
        if path.endswith(".npz"):
            return Projection.from_bytes(storage.read_bytes(path))
        entry = versions.read_manifest_at(path).get("projection")
        if not entry:
            raise ValueError("the version has no projection")
        return Projection.from_bytes(versions.verified_bytes(path, entry))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, InvalidVersionId) as error:
        raise UsageError(f"{what}: cannot use its projection ({error}); {instead}") from None


def choose_label_column(requested: Optional[str], passthrough) -> Optional[str]:
    """The catalog column whose categories the projection separates: the one named (it
    must exist; '' for none), or ``category`` when the catalog has it."""
    if requested is None:
        name = passthrough_name(DEFAULT_LABEL_COLUMN)
        return name if name in passthrough else None
    if not requested:
        return None
    if passthrough_name(requested) not in passthrough:
        raise UsageError(f"--label-column: the catalog has no column {requested} "
                         f"(it has {', '.join(passthrough) or 'only item_id and image_uri'})")
    return passthrough_name(requested)


def choose_text_columns(requested, passthrough) -> List[str]:
    """The metadata columns captions learn from: those named (each must exist), or the
    default ones the catalog has."""
    if requested is None:
        return [passthrough_name(c) for c in caption_transfer.DEFAULT_TEXT_COLUMNS
                if passthrough_name(c) in passthrough]
    missing = [c for c in requested if passthrough_name(c) not in passthrough]
    if missing:
        raise UsageError(f"--text-columns: the catalog has no column {', '.join(missing)} "
                         f"(it has {', '.join(passthrough) or 'only item_id and image_uri'})")
    return [passthrough_name(c) for c in requested]


def check_writable_folder(output_root: str) -> None:
    """A local output root must be (or become) a folder this build can write in: found
    now, not after hours of embedding."""
    if os.path.exists(output_root) and not os.path.isdir(output_root):
        raise UsageError(f"--output {output_root}: exists and is not a folder")
    try:
        os.makedirs(output_root, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_root):
            pass
    except OSError as error:
        raise UsageError(f"--output {output_root}: cannot write there "
                         f"({error.strerror or type(error).__name__})") from None


def read_latest_version(output_root: str):
    """-> (the version id LATEST names, or None; the token to publish against)."""
    try:
        latest = versions.read_latest(output_root)
    except versions.VersionError as error:
        raise UsageError(str(error)) from None
    return latest.version_id, latest.token


def previous_version_summary(output_root: str, latest_version: Optional[str]) -> Optional[dict]:
    """The published version: what the gate compares against (its size and model), what
    changes/ is relative to (its metadata files), and what an incremental build reuses."""
    if not latest_version:
        return None
    folder = version_dir(output_root, latest_version)
    path = join(folder, MANIFEST_FILE)
    try:
        manifest = versions.read_manifest_at(folder)
        shards = [{"shard": int(shard["shard"]),
                   "metadata_file": check_version_file(shard["metadata_file"]),
                   "embeddings_file": check_version_file(shard["embeddings_file"]),
                   "search_k": shard.get("search_k")}
                  for shard in manifest["index"]["shards"]]
        if [shard["shard"] for shard in shards] != list(range(len(shards))):
            raise ValueError("shards out of order")
        return {"version_id": manifest["version_id"], "indexed": manifest["counts"]["indexed"],
                "model_fingerprint": manifest["model"]["fingerprint"],
                "space": manifest["index"].get("space") or index_space(
                    manifest["model"]["fingerprint"],
                    (manifest.get("projection") or {}).get("sha256")),
                "embedding_dim": manifest["model"]["embedding_dim"],
                "version_dir": folder, "shards": shards,
                "schema_version": manifest.get("schema_version"),
                "projection": manifest.get("projection"),
                "reuse_settings": (manifest.get("reuse") or {}).get("settings"),
                "quality": {key: manifest.get("quality", {}).get(key)
                            for key in ("label_column", "label_p_at_10")}}
    except (ValueError, KeyError, TypeError, InvalidVersionId, FileNotFoundError) as error:
        raise UsageError(f"{path}: not the manifest of a complete version "
                         f"({type(error).__name__}: {error}); publish another version with "
                         "catalog-index rollback") from None


def reuse_settings(model_entry: dict, class_names, args) -> dict:
    """What decides an image's vector, size, labels and colors: a version built with other
    settings is not reused."""
    return {"schema_version": SCHEMA_VERSION, "model_fingerprint": model_entry["fingerprint"],
            "embedding_dim": model_entry["embedding_dim"],
            "preprocessing": model_entry["preprocessing"],
            "item_fields": LabelColorCaptioner(class_names=class_names).settings(),
            "max_image_bytes": args.max_image_bytes, "max_pixels": args.max_pixels}


def why_full_build(full: bool, previous: Optional[dict], settings: dict) -> Optional[str]:
    """None when the published version's per-image results can be reused, else why not."""
    if full:
        return "--full"
    if previous is None:
        return "no published version yet"
    before = previous["reuse_settings"]
    if before is None:
        return (f"version {previous['version_id']} was built before incremental builds "
                f"(schema {previous['schema_version']})")
    differ = [key for key in settings if before.get(key) != settings[key]]
    if not differ:
        return None
    if "model_fingerprint" in differ:
        return (f"version {previous['version_id']} was built with another model "
                f"({before.get('model_fingerprint', '?')[:12]} -> "
                f"{settings['model_fingerprint'][:12]})")
    return (f"version {previous['version_id']} was built with other "
            f"{', '.join(key.replace('_', ' ') for key in differ)}")


