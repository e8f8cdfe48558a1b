"""The options of ``catalog-index build``: what each means, how it is spelled (with dashes,
and with underscores as Flex Templates pass them), and how a bad one is reported (one
line, exit status 2). Light to import: ``build --help`` needs neither Beam nor TensorFlow.
"""

from __future__ import annotations

import argparse
from typing import List

from catalog_index import storage
from catalog_index.cli import (OneLineParser, UsageError,  # noqa: F401 (the build's too)
                               positive_int, whole_number)
from catalog_index.schema import InvalidVersionId, check_version_id
from catalog_index.sizing import DEFAULT_MAX_SHARD_MB
from models import caption_transfer
from models.loader import DEFAULT_MODEL, PRECISIONS, RUNTIMES
from models.preprocessing import DEFAULT_MAX_PIXELS

BUILD_DESCRIPTION = """The nightly build: catalog -> embeddings -> captions -> sharded Annoy + Parquet -> publish.

    python -m pipelines.build_index --catalog 'images/**/*.jpg' --output ./out [--num-shards 8]
    catalog-index build --catalog catalog.parquet --output gs://bucket/index --runner DataflowRunner ...

Options not listed in --help are Beam pipeline options (--runner, --temp_location,
--direct_running_mode...), those of the named runner included (--runner DaskRunner
--dask_client_address ...). Locally the default is Beam's FnApiRunner with one worker
thread per core. On every runner the build waits for the job, and its exit status is the
job's outcome: 0 when the version was validated and published, 1 when the build ran but was
not published (failed, cancelled or stopped), 2 for a usage error. --no-wait submits
and exits 0 instead (a Flex Template launcher must).
"""


CAPTION_METHODS = ("head", "neighbours", "labels")


DEFAULT_LABEL_COLUMN = "category"
# The width of the Annoy index's vectors: PCA 256 (+ LDA where there are labels), measured
# against the model's 1,280 and PCA 128 in docs/benchmarks.md ("Vectors that fit the catalog").
DEFAULT_DIMS = 256


def _column_list(text: str) -> List[str]:
    columns = [column.strip() for column in text.split(",") if column.strip()]
    if not columns:
        raise argparse.ArgumentTypeError(f"{text!r} names no column")
    return columns


def _shard_count(text: str):
    return "auto" if text == "auto" else positive_int(text)


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
    value = whole_number(text)
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
    option("max-shard-mb", type=positive_int, default=DEFAULT_MAX_SHARD_MB, metavar="MB",
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
    option("batch-size", type=positive_int, default=4, metavar="N",
           help="inference batch size (default 4: TFLite on CPU is fastest per image at "
                "2-4, where a batch's activations stay in the core's cache; use 64-256 on "
                "a GPU); only the last batch of a bundle is smaller")
    option("inference-threads", type=positive_int, default=None, metavar="N",
           help="threads per TFLite interpreter; a worker runs cores/N batches at once "
                "(default: cores / local worker threads, or 1 on a distributed runner)")
    option("n-trees", type=positive_int, default=16, metavar="N",
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
    option("max-image-bytes", type=positive_int, default=storage.DEFAULT_MAX_IMAGE_BYTES,
           metavar="N", help="image files larger than this are refused before they are "
           f"read (default {storage.DEFAULT_MAX_IMAGE_BYTES:,})")
    option("max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
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


def build_parser() -> OneLineParser:
    """The parser of ``catalog-index build``: the build's options; the rest are Beam's."""
    parser = OneLineParser(prog="catalog-index build", description=BUILD_DESCRIPTION,
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
    return parser


def parse_build_args(argv: List[str]):
    """-> (the build's options, the other arguments: Beam's). Raises UsageError; ``--help``
    prints and exits, without importing Beam or TensorFlow."""
    return build_parser().parse_known_args(switches_without_values(argv))
