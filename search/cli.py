"""``catalog-index query``: ask a published index for the items nearest an image, an item or
a text, best first (:data:`DESCRIPTION` is its ``--help``)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import List, Optional

from catalog_index.cli import OneLineParser, UsageError
from catalog_index.storage import read_image_bytes
from catalog_index.text_index import analyze
from search.index import (DEFAULT_TEXT_WEIGHT, IndexIntegrityError, ModelMismatchError,
                          PublishedIndex)

DESCRIPTION = """\
Ask a published index for the items nearest an image, an item or a text, best first.

  catalog-index query --index ROOT (--image PATH | --item-id ID | --text "...") [-k 10] [--json]
  catalog-index query --index ROOT --image PATH --text "red" [--text-weight 0.5]

What the score is:
  --image, --item-id  cosine similarity of the image embeddings, -1 to 1 (1: the same
                      image, as the index holds it)
  --text              BM25 relevance of the item's caption and text columns (title,
                      category, ...) to the words: 0 and up, higher is better,
                      comparable within one query only
  both                (1 - W) * cosine + W * the share of the words (idf-weighted) that
                      the item's text holds, 0 to 1 (W: --text-weight)
"""
SHOWN_COLUMNS = ("caption", "image_uri")
MAX_K = 10_000
# Control characters (terminal escapes, newlines) in ids and captions are shown escaped.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text) -> str:
    """``text`` with every control character written as an escape, e.g. \\x1b."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode(),
                        str(text if text is not None else ""))


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = OneLineParser(prog="catalog-index query", description=DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, metavar="ROOT",
                        help="output root of the build (local or gs://)")
    parser.add_argument("--version", metavar="ID", help="a version id (default: LATEST)")
    query = parser.add_mutually_exclusive_group()
    query.add_argument("--image", metavar="PATH", help="an image file, local or gs://")
    query.add_argument("--item-id", "--item_id", dest="item_id", metavar="ID",
                       help="an indexed item: more like it")
    parser.add_argument("--text", help="words to match against titles, categories and "
                        "captions; with --image or --item-id, the two are fused")
    parser.add_argument("--text-weight", type=float, default=DEFAULT_TEXT_WEIGHT, metavar="W",
                        help="with an image and a text, how much the text counts, 0..1 "
                             f"(default {DEFAULT_TEXT_WEIGHT})")
    parser.add_argument("-k", type=int, default=10,
                        help=f"number of results (default 10, at most {MAX_K:,})")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of {item_id, score, ...}, best first")
    args = parser.parse_args(argv)
    if not 1 <= args.k <= MAX_K:
        parser.error(f"-k must be between 1 and {MAX_K:,}")
    if args.item_id is not None and not args.item_id.strip():
        parser.error("--item-id must not be empty")
    if args.image is None and args.item_id is None and args.text is None:
        parser.error("one of --image, --item-id or --text is required")
    if args.text is not None and not analyze(args.text):
        parser.error("--text has no words to search for" + (
            " (only stop words such as 'the', or punctuation)" if args.text.strip() else ""))
    if not 0.0 <= args.text_weight <= 1.0:
        parser.error("--text-weight must be between 0 and 1")
    return args


def run(argv: Optional[List[str]] = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(f"catalog-index query: error: {error}", file=sys.stderr)
        return 2
    try:
        index = PublishedIndex.open(args.index, args.version)
        if args.image:
            hits = index.query(image=read_image_bytes(args.image), text=args.text, k=args.k,
                               text_weight=args.text_weight)
        elif args.item_id:
            hits = index.query(vector=index.vector(args.item_id), text=args.text, k=args.k,
                               text_weight=args.text_weight, exclude=[args.item_id])
        else:
            hits = index.query_text(args.text, args.k)
    except (OSError, KeyError, IndexIntegrityError, ModelMismatchError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"catalog-index query: error: {message}", file=sys.stderr)
        return 1
    results = [{"item_id": hit.item_id, "score": round(hit.score, 6),
                **{key: value for key, value in hit.metadata.items()
                   if key not in ("item_id",)}} for hit in hits]
    if not results:
        print(f"catalog-index query: no results: {why_none(args, index)}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, default=str))
    elif results:
        print(f"score: {score_meaning(args)}")
        for result in results:
            print(f"{result['score']:8.4f}  {printable(result['item_id']):<24} "
                  f"{printable(result.get('caption'))}")
    return 0


def score_meaning(args: argparse.Namespace) -> str:
    """What the score column is, for the line above the results."""
    if (args.image or args.item_id) and args.text is not None:
        return (f"{1 - args.text_weight:g} x cosine similarity + {args.text_weight:g} x share "
                "of the words the item's text holds (0 to 1)")
    if args.image or args.item_id:
        return "cosine similarity of the image embeddings (1: the same image)"
    return ("BM25 relevance of the item's caption and text columns to the words (higher is "
            "better; comparable within this query only)")


def why_none(args: argparse.Namespace, index: PublishedIndex) -> str:
    if args.image is None and args.item_id is None:
        return ("no item's caption or text columns hold any of the words (as indexed: "
                + " ".join(dict.fromkeys(analyze(args.text))) + ")")
    return f"version {index.version_id} holds {len(index)} items"


def main() -> None:
    sys.exit(run())
