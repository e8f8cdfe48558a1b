"""The nightly build: catalog -> embeddings -> captions -> sharded Annoy + Parquet -> publish.

    catalog-index build --catalog 'images/**/*.jpg' --output ./out
    catalog-index build --catalog catalog.parquet --output gs://bucket/index --runner DataflowRunner ...

This module parses the command line (pipelines/options.py: the build's options;
runners/registry.py: Beam's and the runner's), plans the build against the published
version, wires the stages of transforms/ into one pipeline, runs it and reports the outcome.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import sys
import tempfile
from typing import List, NamedTuple, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from catalog_index import storage
from catalog_index.schema import (LATEST_FILE, MANIFEST_FILE, SCHEMA_VERSION, InvalidVersionId,
                                  check_version_file, check_version_id, index_space, join,
                                  passthrough_name, version_dir)
from models.captioner import LabelColorCaptioner
from models.loader import ModelLoadError, load_model, runtime_for
from models.projection import Projection
from pipelines.console import quiet_output
from pipelines.job import run_job
from pipelines.options import (DEFAULT_LABEL_COLUMN, UsageError, parse_build_args)
from runners import registry
from models import caption_transfer
from transforms.caption import Caption
from transforms.caption_transfer import LearnCaptions
from transforms.embed import Embed, EmbeddingModelHandler
from transforms.errors import ERRORS
from transforms.fetch import FetchImages
from transforms.preprocess import DecodeAndPreprocess
from transforms.projection import LearnProjection, write_projection
from transforms.query_model import write_query_model
from transforms.publish import Publish
from transforms.report import Report
from transforms.read_catalog import CatalogError, ReadCatalog, catalog_columns
from transforms.reuse import UNCLAIMED, MatchContent, MatchPrevious, ReadPreviousVersion
from catalog_index.sizing import shard_count
from transforms.shard import BuildShard, BuildShards, GroupIntoShards
from transforms.text_index import BuildTextIndex
from transforms.validate import Validate
from transforms.write_metadata import WriteErrors

def parse_args(argv: List[str]):
    """-> (build options namespace, Beam PipelineOptions). Raises UsageError."""
    args, beam_args = parse_build_args(argv)
    try:
        runner = registry.import_runner_options(beam_args)
        if args.no_wait and runner in registry.JOBS_END_WITH_CLIENT:
            raise UsageError(f"--no-wait: a job on {registry.runner_name(beam_args)} is "
                             "cancelled when the client that submitted it exits; leave "
                             "--no-wait off")
        return args, registry.pipeline_options(beam_args)
    except registry.RunnerError as error:
        raise UsageError(str(error)) from None


def default_version_id() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def build_pipeline(pipeline: beam.Pipeline, args, build: dict) -> None:
    """Wire the stages; ``build`` (from :func:`plan_build`) carries the version, model and
    index settings."""
    out_dir = build["version_dir"]
    model_info = build["model_info"]
    catalog = pipeline | "ReadCatalog" >> ReadCatalog(args.catalog, build["passthrough_columns"])
    previous = build["previous"]
    reusable = pipeline | "ReadPreviousVersion" >> ReadPreviousVersion(
        previous["version_dir"], previous["shards"]) if build["reuse"]["from_version"] else None
    matched = catalog["items"] | "MatchPrevious" >> MatchPrevious(
        reusable, model_info.class_names)
    to_read, hash_errors = matched.items, []
    if reusable is not None:  # reuse by content: images whose bytes the version embedded
        hashed = to_read | "HashImages" >> FetchImages(args.max_image_bytes, keep_bytes=False)
        to_read = hashed.items | "MatchContent" >> MatchContent(
            matched[UNCLAIMED], model_info.class_names)
        hash_errors = [hashed[ERRORS]]
    fetched = to_read | "FetchImages" >> FetchImages(args.max_image_bytes)
    decoded = fetched.items | "DecodeAndPreprocess" >> DecodeAndPreprocess(
        model_info.preprocessing, args.max_pixels)
    handler = EmbeddingModelHandler(args.model, args.runtime,
                                    batch_size=args.batch_size,
                                    inference_threads=build["inference_threads"],
                                    precision=args.precision)
    embedded = decoded.items | "Embed" >> Embed(handler)
    captioned = embedded["items"] | "Caption" >> Caption(class_names=model_info.class_names)
    items = captioned.items  # reused items come through every stage untouched
    previous_files = previous and {key: previous[key]
                                   for key in ("version_dir", "shards", "space")}
    caption_model = items | "LearnCaptions" >> LearnCaptions(
        build["text_columns"], args.caption_method, previous=previous_files)

    start = build["projection_start"]
    learned = items | "LearnProjection" >> LearnProjection(
        args.dims, build["label_column"], previous=previous_files, start=start.projection,
        start_origin=start.origin, refit_on_drift=start.refit_on_drift)
    projection = learned | "Projection" >> beam.Map(lambda fitted_and_origin: fitted_and_origin[0])
    projection_entry = learned | "WriteProjection" >> beam.Map(
        write_projection, out_dir, build["projection_settings"])
    query_model_entry = (pipeline | "QueryModel" >> beam.Create([args.model])
                         | "WriteQueryModel" >> beam.Map(
                             write_query_model, out_dir, model_info.fingerprint))

    num_shards = catalog["input_count"] | "NumShards" >> beam.Map(
        _num_shards, args.num_shards, build["index_width"], args.max_shard_mb)
    shards = items | "GroupIntoShards" >> GroupIntoShards(num_shards, out_dir)
    shard_summaries = shards | "BuildShards" >> BuildShards(BuildShard(
        out_dir, build["passthrough_columns"], model_info.embedding_dim, args.n_trees,
        args.seed, args.min_recall, model_info.fingerprint, build["text_columns"],
        previous=previous_files, label_column=build["label_column"]),
        num_shards, caption_model, projection)

    errors = ((catalog["errors"], *hash_errors, fetched[ERRORS], decoded[ERRORS],
               embedded[ERRORS], captioned[ERRORS]) | "AllErrors" >> beam.Flatten())
    errors_written = errors | "WriteErrors" >> WriteErrors(out_dir)

    manifest_build = {key: value for key, value in build.items()
                      if key not in ("model_info", "projection_start")}
    text_index = shard_summaries | "BuildTextIndex" >> BuildTextIndex(out_dir)
    # --runtime auto is resolved by each worker on its own hardware; the manifest says what
    # a worker chose, not what the launcher was asked.
    runtime = (pipeline | "ModelAndRuntime" >> beam.Create([(args.model, args.runtime)])
               | "AsWorkersResolveIt" >> beam.MapTuple(runtime_for))
    manifests = shard_summaries | "Validate" >> Validate(
        manifest_build, num_shards, catalog["input_count"], errors, errors_written, text_index,
        runtime, projection_entry, query_model_entry)
    reported = manifests | "Report" >> Report(args.output, out_dir)
    _ = reported | "Publish" >> Publish(args.output, out_dir, build["latest_token"])


def _num_shards(catalog_rows: int, requested, width: int, max_shard_mb: int) -> int:
    return requested if requested != "auto" else shard_count(catalog_rows, width,
                                                             max_shard_mb * 2**20)


def plan_build(args, pipeline_options: PipelineOptions) -> dict:
    """Check inputs and load the model once (which also fills the conversion cache)."""
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
    return {"version_id": version_id, "version_dir": out_dir, "source": args.catalog,
            "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": model_entry, "model_info": model.info,
            "index": {"n_trees": args.n_trees, "seed": args.seed},
            "inference_threads": args.inference_threads or registry.default_inference_threads(
                pipeline_options),
            "options": {key: value for key, value in sorted(vars(args).items())},
            "passthrough_columns": passthrough, "text_columns": text_columns,
            "label_column": label_column,
            "projection_settings": projection_settings,
            "projection_start": start,
            # what --max-shard-mb counts: the projection's width (a fitted one's PCA part;
            # its LDA part adds labels - 1), else the model's
            "index_width": start.projection.dims if start.projection else
            (args.dims or model_entry["embedding_dim"]),
            "latest_token": latest_token,
            "previous": previous,
            "reuse": {"settings": settings,
                      "from_version": None if full_reason else previous["version_id"],
                      "full_build_reason": full_reason},
            "gate": {"min_recall": args.min_recall, "max_failure_rate": args.max_failure_rate,
                     "max_count_drop": args.max_count_drop,
                     "max_precision_drop": args.max_precision_drop,
                     "allow_model_change": args.allow_model_change}}


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
        entry = json.loads(storage.read_text(join(path, MANIFEST_FILE))).get("projection")
        if not entry:
            raise ValueError("the version has no projection")
        file = join(path, check_version_file(entry["file"]))
        data = storage.read_bytes(file)
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ValueError(f"{entry['file']} does not match the sha256 in its manifest")
        return Projection.from_bytes(data)
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
    path = join(output_root, LATEST_FILE)
    try:
        content, token = storage.read_latest(path)
        return (None if content is None else check_version_id(content.strip())), token
    except (InvalidVersionId, UnicodeDecodeError) as error:
        raise UsageError(f"{path} does not hold a version id ({error}); fix it with "
                         "catalog-index rollback") from None


def previous_version_summary(output_root: str, latest_version: Optional[str]) -> Optional[dict]:
    """The published version: what the gate compares against (its size and model), what
    changes/ is relative to (its metadata files), and what an incremental build reuses."""
    if not latest_version:
        return None
    folder = version_dir(output_root, latest_version)
    path = join(folder, MANIFEST_FILE)
    try:
        manifest = json.loads(storage.read_text(path))
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


def run(argv: Optional[List[str]] = None) -> int:
    """Parse, build, run, and report. Returns the exit status."""
    storage.use_anonymous_beam_credentials_with_emulator()
    try:
        args, pipeline_options = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(f"catalog-index build: error: {error}", file=sys.stderr)
        return 2
    args.version_id = args.version_id or default_version_id()
    log_path = os.path.join(tempfile.gettempdir(), "catalog-index",
                            f"build-{args.version_id}.log")
    with quiet_output(log_path, enabled=not args.verbose) as console:
        return _run_build(args, pipeline_options, console, log_path)


def _run_build(args, pipeline_options: PipelineOptions, console, log_path: str) -> int:
    try:
        build = plan_build(args, pipeline_options)
    except (UsageError, CatalogError, ModelLoadError, storage.StorageError) as error:
        print(f"catalog-index build: error: {error}", file=console)
        return 2
    reuse = build["reuse"]
    if build["previous"] and not reuse["from_version"]:  # an incremental build says nothing
        print(f"catalog-index build: full build: {reuse['full_build_reason']}", file=console)
    return run_job(lambda: submit(args, pipeline_options, build), args, pipeline_options,
                   build, console, log_path, read_latest_version)


def submit(args, pipeline_options: PipelineOptions, build: dict):
    """Construct the pipeline and hand it to the runner; returns the PipelineResult."""
    pipeline = beam.Pipeline(runner=registry.make_runner(pipeline_options),
                             options=pipeline_options)
    build_pipeline(pipeline, args, build)
    return pipeline.run()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    sys.exit(run())


if __name__ == "__main__":
    main()
