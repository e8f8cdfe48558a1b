"""The nightly build: catalog -> embeddings -> captions -> sharded Annoy + Parquet -> publish.

    catalog-index build --catalog 'images/**/*.jpg' --output ./out
    catalog-index build --catalog catalog.parquet --output gs://bucket/index --runner DataflowRunner ...

This module parses the command line (pipelines/options.py: the build's options;
runners/registry.py: Beam's and the runner's), plans the build against the published
version, wires the stages of transforms/ into one pipeline, runs it and reports the outcome.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import List, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from catalog_index import storage
from catalog_index.sizing import shard_count
from models.loader import ModelLoadError, runtime_for
from pipelines.console import quiet_output
from pipelines.job import run_job
from pipelines.options import UsageError, parse_build_args
from pipelines.plan import BuildPlan, default_version_id, plan_build, read_latest_version
from runners import registry
from runners.beam_gcs import use_anonymous_beam_credentials_with_emulator
from transforms.caption import Caption
from transforms.caption_transfer import LearnCaptions
from transforms.embed import Embed, EmbeddingModelHandler
from transforms.errors import ERRORS
from transforms.fetch import FetchImages
from transforms.preprocess import DecodeAndPreprocess
from transforms.projection import LearnProjection, write_projection
from transforms.publish import Publish
from transforms.query_model import write_query_model
from transforms.read_catalog import CatalogError, ReadCatalog
from transforms.report import Report
from transforms.reuse import UNCLAIMED, MatchContent, MatchPrevious, ReadPreviousVersion
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


def build_pipeline(pipeline: beam.Pipeline, args, build: BuildPlan) -> None:
    """Wire the stages; ``build`` (from :func:`plan_build`) carries the version, model and
    index settings."""
    out_dir = build.version_dir
    model_info = build.model_info
    catalog = pipeline | "ReadCatalog" >> ReadCatalog(args.catalog, build.passthrough_columns)
    previous = build.previous
    reusable = pipeline | "ReadPreviousVersion" >> ReadPreviousVersion(
        previous["version_dir"], previous["shards"]) if build.reuse["from_version"] else None
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
                                    inference_threads=build.inference_threads,
                                    precision=args.precision)
    embedded = decoded.items | "Embed" >> Embed(handler)
    captioned = embedded["items"] | "Caption" >> Caption(class_names=model_info.class_names)
    items = captioned.items  # reused items come through every stage untouched
    previous_files = build.previous_files
    caption_model = items | "LearnCaptions" >> LearnCaptions(
        build.text_columns, args.caption_method, previous=previous_files)

    start = build.projection_start
    learned = items | "LearnProjection" >> LearnProjection(
        args.dims, build.label_column, previous=previous_files, start=start.projection,
        start_origin=start.origin, refit_on_drift=start.refit_on_drift)
    projection = learned | "Projection" >> beam.Map(lambda fitted_and_origin: fitted_and_origin[0])
    projection_entry = learned | "WriteProjection" >> beam.Map(
        write_projection, out_dir, build.projection_settings)
    query_model_entry = (pipeline | "QueryModel" >> beam.Create([args.model])
                         | "WriteQueryModel" >> beam.Map(
                             write_query_model, out_dir, model_info.fingerprint))

    num_shards = catalog["input_count"] | "NumShards" >> beam.Map(
        _num_shards, args.num_shards, build.index_width, args.max_shard_mb)
    shards = items | "GroupIntoShards" >> GroupIntoShards(num_shards, out_dir)
    shard_summaries = shards | "BuildShards" >> BuildShards(BuildShard(
        out_dir, build.passthrough_columns, model_info.embedding_dim, args.n_trees,
        args.seed, args.min_recall, model_info.fingerprint, build.text_columns,
        previous=previous_files, label_column=build.label_column),
        num_shards, caption_model, projection)

    errors = ((catalog["errors"], *hash_errors, fetched[ERRORS], decoded[ERRORS],
               embedded[ERRORS], captioned[ERRORS]) | "AllErrors" >> beam.Flatten())
    errors_written = errors | "WriteErrors" >> WriteErrors(out_dir)

    manifest_build = build.for_manifest()
    text_index = shard_summaries | "BuildTextIndex" >> BuildTextIndex(out_dir)
    # --runtime auto is resolved by each worker on its own hardware; the manifest says what
    # a worker chose, not what the launcher was asked.
    runtime = (pipeline | "ModelAndRuntime" >> beam.Create([(args.model, args.runtime)])
               | "AsWorkersResolveIt" >> beam.MapTuple(runtime_for))
    manifests = shard_summaries | "Validate" >> Validate(
        manifest_build, num_shards, catalog["input_count"], errors, errors_written, text_index,
        runtime, projection_entry, query_model_entry)
    reported = manifests | "Report" >> Report(args.output, out_dir)
    _ = reported | "Publish" >> Publish(args.output, out_dir, build.latest_token)


def _num_shards(catalog_rows: int, requested, width: int, max_shard_mb: int) -> int:
    return requested if requested != "auto" else shard_count(catalog_rows, width,
                                                             max_shard_mb * 2**20)


def run(argv: Optional[List[str]] = None) -> int:
    """Parse, build, run, and report. Returns the exit status."""
    use_anonymous_beam_credentials_with_emulator()
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
    reuse = build.reuse
    if build.previous and not reuse["from_version"]:  # an incremental build says nothing
        print(f"catalog-index build: full build: {reuse['full_build_reason']}", file=console)
    return run_job(lambda: submit(args, pipeline_options, build), args, pipeline_options,
                   build, console, log_path, read_latest_version)


def submit(args, pipeline_options: PipelineOptions, build: BuildPlan):
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
