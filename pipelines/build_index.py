"""The nightly build: catalog -> embeddings -> captions -> sharded Annoy + Parquet -> publish.

    python -m pipelines.build_index --catalog 'images/**/*.jpg' --output ./out [--num-shards 8]
    catalog-index build --catalog catalog.parquet --output gs://bucket/index --runner DataflowRunner ...

Options not listed in ``--help`` are Beam pipeline options (``--runner``, ``--temp_location``,
``--direct_running_mode``...), those of the named runner included (``--runner DaskRunner
--dask_client_address ...``). Locally the default is Beam's FnApiRunner with one worker
thread per core. On every runner the build waits for the job, and its exit status is the
job's outcome: 0 when the version was validated and published, 1 when the build ran but was
not published (failed, cancelled or stopped), 2 for a usage error. ``--no-wait`` submits
and exits 0 instead (a Flex Template launcher must).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
from typing import List, NamedTuple, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from catalog_index import storage
from catalog_index.progress import ProgressReporter
from catalog_index.schema import (LATEST_FILE, MANIFEST_FILE, SCHEMA_VERSION, InvalidVersionId,
                                  check_version_file, check_version_id, index_space, join,
                                  passthrough_name, version_dir)
from models.captioner import LabelColorCaptioner
from models.loader import (DEFAULT_MODEL, PRECISIONS, RUNTIMES, ModelLoadError, load_model,
                           runtime_for)
from models.preprocessing import DEFAULT_MAX_PIXELS
from models.projection import Projection
from pipelines.console import quiet_output
from runners.local import LocalRunner
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
from transforms.shard import (DEFAULT_MAX_SHARD_MB, BuildShard, BuildShards,
                              GroupIntoShards, shard_count)
from transforms.text_index import BuildTextIndex
from transforms.validate import Validate
from transforms.write_metadata import WriteErrors

# Locally, threads beat processes: decoding (libjpeg-turbo) and inference (TFLite/TF) release
# the GIL, and one shared model per process avoids each worker process importing TensorFlow
# and loading its own copy (2,000 800 px JPEGs on 2 cores: 135 images/s with threads, 52 with
# processes; docs/benchmarks.md). --direct_running_mode=multi_processing works too.
# The FnApiRunner is what Beam 2.77's DirectRunner falls back to after it has tried to
# download the Prism runner from GitHub: naming it skips a network call at run time.
# Runners Beam has no short name for, or whose gaps runners/ closes: --runner NAME -> class.
PROJECT_RUNNERS = {"daskrunner": "runners.dask.DaskRunner"}
# Runners whose job lives only as long as the client that submitted it (Dask's futures).
JOBS_END_WITH_CLIENT = {"runners.dask.DaskRunner"}
LOCAL_DEFAULTS = {"runner": "FnApiRunner", "direct_running_mode": "multi_threading",
                  "direct_num_workers": str(os.cpu_count() or 1)}


class UsageError(Exception):
    """A bad flag or input: reported as one line, exit status 2."""


class _OneLineParser(argparse.ArgumentParser):
    """Errors are one line; no flag is taken for a prefix of another (Beam's --project
    would otherwise be refused as ambiguous with --projection-from)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message):
        raise UsageError(message)


CAPTION_METHODS = ("head", "neighbours", "labels")


def _column_list(text: str) -> List[str]:
    columns = [column.strip() for column in text.split(",") if column.strip()]
    if not columns:
        raise argparse.ArgumentTypeError(f"{text!r} names no column")
    return columns


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _shard_count(text: str):
    return "auto" if text == "auto" else _positive_int(text)


def _version_id(text: str) -> str:
    """A folder name: letters, digits, '.', '_' and '-' (no slashes, no '..' tricks)."""
    try:
        return check_version_id(text)
    except InvalidVersionId as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# Switches: ``--full`` on its own, or with a value (``--full=false``, ``--full true``), as a
# Flex Template or a scheduler passes every parameter.
SWITCHES = ("replace", "allow-model-change", "full", "no-wait")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def switches_without_values(argv: List[str]) -> List[str]:
    """``argv`` with each switch's value (``--full=true``, ``--full false``) resolved: the
    bare switch when true, nothing when false. Raises UsageError for another value."""
    spellings = {f"--{name}" for name in SWITCHES} | \
        {f"--{name.replace('-', '_')}" for name in SWITCHES}
    result, args = [], iter(enumerate(argv))
    for position, arg in args:
        name, equals, value = arg.partition("=")
        if name not in spellings:
            result.append(arg)
            continue
        if not equals and position + 1 < len(argv) and \
                argv[position + 1].lower() in _TRUE + _FALSE:
            value = next(args)[1]
        elif not equals:
            value = "true"
        if value.lower() not in _TRUE + _FALSE:
            raise UsageError(f"argument {name}: {value!r} is not true or false")
        if value.lower() in _TRUE:
            result.append(name)
    return result


def _dimensions(text: str) -> int:
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 (no projection) or more")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1")
    return value


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """Every build option, each spelled with dashes and (for Dataflow templates) underscores."""
    def option(name, **kwargs):
        spellings = [f"--{name}"] + ([f"--{name.replace('-', '_')}"] if "-" in name else [])
        parser.add_argument(*spellings, dest=name.replace("-", "_"), **kwargs)

    option("catalog", required=True, metavar="SRC",
           help="a glob of image files (item_id = path below the glob's fixed folder, no "
                "extension) or a catalog file (.csv, .jsonl, .parquet) with item_id and "
                "image_uri columns; other columns pass through to the metadata")
    option("output", required=True, metavar="ROOT",
           help="output root, local or gs://; versions go to ROOT/versions/<id>/, and "
                "ROOT/LATEST names the published one")
    option("num-shards", type=_shard_count, default="auto", metavar="N",
           help="number of Annoy index shards, or auto (default): as many as keep each "
                "shard's index vectors within --max-shard-mb")
    option("max-shard-mb", type=_positive_int, default=DEFAULT_MAX_SHARD_MB, metavar="MB",
           help="with --num-shards auto, the most MiB a shard's index vectors take (float32 "
                f"at the index's width; default {DEFAULT_MAX_SHARD_MB}: 250,000 items at "
                "265 dimensions). A worker holds one shard's at a time while it builds its "
                "index, with Annoy's copy: about 2.5 times this")
    option("version-id", metavar="ID", default=None, type=_version_id,
           help="version folder name (default: UTC time, e.g. 20261122T014500Z)")
    option("replace", action="store_true",
           help="rebuild a version folder that already exists (e.g. after a crashed "
                "build); without it an existing version is an error")
    option("model", default=DEFAULT_MODEL,
           help="efficientnet_lite0 (default), efficientnet_lite1 (240 px), "
                "efficientnet_lite2 (260 px), a .keras file, a SavedModel / TF Hub folder "
                "(local or gs://), or hub:HANDLE")
    option("runtime", choices=RUNTIMES, default="auto",
           help="auto (default: Keras on a GPU, TFLite on CPU), keras, tflite or savedmodel")
    option("batch-size", type=_positive_int, default=4, metavar="N",
           help="inference batch size (default 4: TFLite on CPU is fastest per image at "
                "2-4, where a batch's activations stay in the core's cache; use 64-256 on "
                "a GPU); only the last batch of a bundle is smaller")
    option("inference-threads", type=_positive_int, default=None, metavar="N",
           help="threads per TFLite interpreter; a worker runs cores/N batches at once "
                "(default: cores / local worker threads, or 1 on a distributed runner)")
    option("n-trees", type=_positive_int, default=16, metavar="N",
           help="Annoy trees per shard to start with; doubled (up to twice) when the "
                "recall target needs it (default 16)")
    option("seed", type=int, default=42, help="Annoy build seed (default 42)")
    option("min-recall", type=_fraction, default=0.95, metavar="R",
           help="quality gate: Annoy recall@10 against exact search; each shard's search_k "
                "(and trees, if needed) is chosen to reach it (default 0.95)")
    option("max-failure-rate", type=_fraction, default=0.05, metavar="F",
           help="quality gate: most input that may fail (default 0.05)")
    option("max-count-drop", type=_fraction, default=0.10, metavar="F",
           help="quality gate: largest drop in indexed items against the published "
                "version (default 0.10)")
    option("max-precision-drop", type=_fraction, default=0.05, metavar="F",
           help="quality gate: largest fall in P@10 of the --label-column labels (how often "
                "an item's 10 nearest share its label) against the published version "
                "(default 0.05)")
    option("allow-model-change", action="store_true",
           help="quality gate: publish even if the model or embedding dimension differs "
                "from the published version's")
    option("precision", choices=PRECISIONS, default="float32",
           help="float32 (default) or mixed (float16 compute on a GPU, float32 "
                "embeddings; Keras runtime only)")
    option("max-image-bytes", type=_positive_int, default=storage.DEFAULT_MAX_IMAGE_BYTES,
           metavar="N", help="image files larger than this are refused before they are "
           f"read (default {storage.DEFAULT_MAX_IMAGE_BYTES:,})")
    option("max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
           help=f"images with more pixels are rejected (default {DEFAULT_MAX_PIXELS:,})")
    option("full", action="store_true",
           help="embed every image again, even those whose bytes the published version "
                "already embedded (by default, a build reuses them when that version was "
                "built with the same model and settings)")
    option("text-columns", type=_column_list, default=None, metavar="A,B",
           help="catalog columns that say what a product is, for captions in the catalog's "
                "words (default: " + ", ".join(caption_transfer.DEFAULT_TEXT_COLUMNS)
                + ", those the catalog has)")
    option("dims", type=_dimensions, default=DEFAULT_DIMS, metavar="N",
           help="project the vectors in the Annoy index to N dimensions learned from the "
                f"catalog (PCA; default {DEFAULT_DIMS}), plus one fewer than the number of "
                "labels of --label-column (LDA: 256 + 9 = 265 for 10 categories); 0 keeps "
                "the model's own width. A nightly build keeps the published version's "
                "projection unless its new items drift from it; --full fits anew")
    option("label-column", default=None, metavar="NAME",
           help="with --dims, a catalog column of categories that the projection learns "
                "to separate (default: category, when the catalog has it; '' for none)")
    option("projection-from", default=None, metavar="PATH",
           help="use this projection instead of fitting one: a version folder (its "
                "projection, checked against its manifest) or a projection .npz file")
    option("caption-method", choices=CAPTION_METHODS, default="head",
           help="how untitled items get captions in the catalog's words: head (default: a "
                "linear head fitted on a sample of the items with text), neighbours (votes "
                "of the nearest such items), or labels (ImageNet labels and colors only)")


def parse_args(argv: List[str]):
    """-> (build options namespace, Beam PipelineOptions). Raises UsageError."""
    parser = _OneLineParser(prog="catalog-index build", description=__doc__.replace("``", ""),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_build_arguments(parser)
    parser.add_argument("--progress-seconds", type=float, default=10.0, metavar="S",
                        help="print a progress line on stderr every S seconds (default 10)")
    parser.add_argument("--no-wait", "--no_wait", dest="no_wait", action="store_true",
                        help="submit the job and exit 0 without waiting for its outcome "
                             "(a Flex Template launcher; see docs/operations.md)")
    parser.add_argument("--verbose", action="store_true",
                        help="show the libraries' own logs (TensorFlow, Beam) on the terminal; "
                             "without it they go to a log file under the temp folder")
    args, beam_args = parser.parse_known_args(switches_without_values(argv))
    runner = import_runner_options(beam_args)
    if args.no_wait and runner in JOBS_END_WITH_CLIENT:
        raise UsageError(f"--no-wait: a job on {runner_name(beam_args)} is cancelled when "
                         "the client that submitted it exits; leave --no-wait off")
    unknown = unknown_beam_args(beam_args)
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)}")
    given = {arg.lstrip("-").split("=")[0] for arg in beam_args if arg.startswith("--")}
    defaults = [] if "runner" in given else [
        f"--{key}={value}" for key, value in LOCAL_DEFAULTS.items() if key not in given]
    return args, PipelineOptions(beam_args + defaults)


def runner_name(beam_args: List[str]) -> Optional[str]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runner", default=None)
    return parser.parse_known_args(beam_args)[0].runner


def runner_class_path(name: Optional[str]) -> Optional[str]:
    """The class a ``--runner`` name means: ours (PROJECT_RUNNERS), one of Beam's short
    names, or a dotted class path; None when Beam knows no such name."""
    from apache_beam.runners.runner import _RUNNER_MAP

    if not name:
        return None
    lowered = name.lower()
    for table in (PROJECT_RUNNERS, _RUNNER_MAP):
        path = table.get(lowered) or table.get(lowered + "runner")
        if path:
            return path
    return name if "." in name else None


def import_runner_options(beam_args: List[str]) -> Optional[str]:
    """Import the named runner's module, so that its options (DaskOptions...) are known
    when unknown flags are checked; -> its class path (None: the default runner)."""
    name = runner_name(beam_args)
    path = runner_class_path(name)
    if path is None:
        if name:
            raise UsageError(f"--runner {name}: no such runner (a Beam runner name, "
                             "DaskRunner, or a module.Class path)")
        return None
    try:
        importlib.import_module(path.rsplit(".", 1)[0])
    except ImportError as error:
        extra = " (pip install '.[dask]')" if "dask" in path else ""
        raise UsageError(f"--runner {name}: {error}{extra}") from None
    return path


def unknown_beam_args(beam_args: List[str]) -> List[str]:
    """Arguments that no Beam options class knows (Beam itself would only warn)."""
    parser = argparse.ArgumentParser(add_help=False)
    classes, seen = list(PipelineOptions.__subclasses__()), set()
    while classes:
        cls = classes.pop()
        if cls in seen:
            continue
        seen.add(cls)
        classes.extend(cls.__subclasses__())
        try:
            cls._add_argparse_args(parser)
        except argparse.ArgumentError:
            pass  # an option two classes share
    _, unknown = parser.parse_known_args(beam_args)
    return [arg for arg in unknown if arg.startswith("-")]


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


def default_inference_threads(pipeline_options: PipelineOptions) -> int:
    """Split the cores between the worker threads that run inference side by side."""
    options = pipeline_options.get_all_options()
    cores = os.cpu_count() or 1
    if (_runner_path(pipeline_options) in (None, *FN_API_RUNNER_PATHS)) and \
            options.get("direct_running_mode") != "multi_processing":
        requested = options.get("direct_num_workers")
        workers = cores if requested == 0 else int(requested or 1)  # Beam: 0 = one per core
        return max(1, cores // workers)
    return 1  # distributed runners and process pools: a process per core already


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
    local = is_local(pipeline_options)
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
            "inference_threads": args.inference_threads or default_inference_threads(
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


DEFAULT_LABEL_COLUMN = "category"
# The width of the Annoy index's vectors: PCA 256 (+ LDA where there are labels), measured
# against the model's 1,280 and PCA 128 in docs/benchmarks.md ("Vectors that fit the catalog").
DEFAULT_DIMS = 256


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
    log = "" if args.verbose else f" (log: {log_path})"
    result = None
    try:
        with ProgressReporter(console, args.progress_seconds), _stop_raises_interrupt():
            result = submit(args, pipeline_options, build)
            if args.no_wait:
                # The job publishes LATEST itself, and fails (alerting whoever watches the
                # runner) when the quality gate does.
                print(f"submitted version {build['version_id']} to "
                      f"{pipeline_options.get_all_options()['runner']}; not waiting (--no-wait)")
                return 0
            state = result.wait_until_finish()
    except KeyboardInterrupt:
        cancelled = _cancel(result)  # none to cancel: the local runner stops with this process
        if read_latest_version(args.output)[0] == build["version_id"]:
            print(f"catalog-index build: stopped, after version {build['version_id']} was "
                  f"published (LATEST names it){log}", file=console)
        else:
            job = "; the job was cancelled" if cancelled else ""
            print(f"catalog-index build: not published: stopped{job}; LATEST is unchanged "
                  f"(rebuild with --replace){log}", file=console)
        return 1
    except Exception as error:  # the runner wraps the worker's exception in its own
        logging.getLogger(__name__).debug("build failed", exc_info=True)
        print(f"catalog-index build: not published: {_root_cause(error)}{log}", file=console)
        return 1
    if state not in (None, PipelineState.DONE):
        print(f"catalog-index build: not published: the job ended {state}{log}", file=console)
        return 1
    try:
        return report_outcome(args.output, build)
    except (OSError, ValueError, KeyError) as error:
        print(f"catalog-index build: the job ended, but its manifest cannot be read from here "
              f"({type(error).__name__}: {error}); on a cluster, --output must be storage "
              f"that the workers and this machine share (gs://){log}", file=console)
        return 1


class _stop_raises_interrupt:
    """SIGTERM (a scheduler stopping the task) ends the wait as Ctrl-C does, so that the
    job is cancelled instead of left running without anyone waiting for it."""

    def __enter__(self):
        # Only the main thread may set a handler (a build run from a thread keeps Python's).
        self.previous = signal.signal(signal.SIGTERM, _raise_interrupt) \
            if threading.current_thread() is threading.main_thread() else None

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _cancel(result) -> bool:
    """Cancel the job behind ``result``; -> whether there was one and it was cancelled."""
    try:
        if result is not None:
            result.cancel()
            return True
    except Exception:  # noqa: BLE001 (some runners cannot cancel; the message says stopped)
        logging.getLogger(__name__).debug("cancel failed", exc_info=True)
    return False


# Runners that run the job in this process: the FnApiRunner (the DirectRunner's fallback),
# run as runners/local.py's LocalRunner, and the old bundle-based DirectRunner.
FN_API_RUNNER_PATHS = ("apache_beam.runners.direct.direct_runner.DirectRunner",
                       "apache_beam.runners.portability.fn_api_runner.FnApiRunner")
IN_PROCESS_RUNNER_PATHS = FN_API_RUNNER_PATHS + (
    "apache_beam.runners.direct.direct_runner.BundleBasedDirectRunner",)


def _runner_path(pipeline_options: PipelineOptions) -> Optional[str]:
    """The class the options' runner name means (None: the default, the FnApiRunner)."""
    name = pipeline_options.get_all_options().get("runner")
    return None if name is None else runner_class_path(name)


def is_local(pipeline_options: PipelineOptions) -> bool:
    path = _runner_path(pipeline_options)
    return path is None or path in IN_PROCESS_RUNNER_PATHS


def submit(args, pipeline_options: PipelineOptions, build: dict):
    """Construct the pipeline and hand it to the runner; returns the PipelineResult."""
    pipeline = beam.Pipeline(runner=make_runner(pipeline_options), options=pipeline_options)
    build_pipeline(pipeline, args, build)
    return pipeline.run()


def make_runner(pipeline_options: PipelineOptions):
    """The runner for ``--runner``: ours where runners/ adapts one, else None (Beam's)."""
    path = _runner_path(pipeline_options)
    if path is None or path in FN_API_RUNNER_PATHS:
        return LocalRunner()
    if path not in PROJECT_RUNNERS.values():
        return None
    module, cls = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)()


class _HideReportedFailures(logging.Filter):
    """Beam logs a failing worker's whole traceback. For the outcomes the launcher reports
    in one line itself (the quality gate failed, another build published first) that is
    noise; every other failure keeps its traceback."""

    REPORTED = ("QualityGateFailed", "PublishConflict", "PublishFailed")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += type(record.exc_info[1]).__name__
        return not any(name in text for name in self.REPORTED)


for _logger in ("apache_beam.runners.common", "apache_beam.runners.worker.sdk_worker"):
    logging.getLogger(_logger).addFilter(_HideReportedFailures())


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Failed|Conflict|Exit)\b.*")


def _root_cause(error: BaseException) -> str:
    """The most specific message in an exception chain, on one line. Runners re-raise a
    worker's exception as the text of its traceback: the last exception line is the cause."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    lines = [line.strip() for line in str(error).splitlines()
             if _EXCEPTION_LINE.match(line.strip())]
    text = lines[-1] if lines else f"{type(error).__name__}: {error}"
    text = re.sub(r"^[\w.]*\.(?=\w+: )", "", text)  # transforms.publish.QualityGateFailed -> ...
    return " ".join(text.split(" [while running")[0].split())[:1000]


def report_outcome(output_root: str, build: dict) -> int:
    """A local run that got here published its version: a failed gate or a lost race
    raises inside the pipeline instead."""
    manifest = json.loads(storage.read_text(join(build["version_dir"], MANIFEST_FILE)))
    counts = manifest["counts"]
    print(f"version {manifest['version_id']}: {counts['input']} input, {counts['indexed']} indexed, "
          f"{counts['failed']} failed, {counts['duplicate']} duplicate, "
          f"{len(manifest['index']['shards'])} shards, {manifest['timings']['seconds']:.1f} s")
    print(f"published: {join(output_root, LATEST_FILE)} -> {manifest['version_id']}")
    return 0


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    sys.exit(run())


if __name__ == "__main__":
    main()
