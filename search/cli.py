"""``catalog-index query``: ask a published index for the items nearest an image, an item or
a text, best first.

    catalog-index query --index ROOT (--image PATH | --item-id ID | --text "...") [-k 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import List, Optional

from catalog_index.storage import read_image_bytes
from search.index import IndexIntegrityError, ModelMismatchError, PublishedIndex

SHOWN_COLUMNS = ("caption", "image_uri")
MAX_K = 10_000
# Control characters (terminal escapes, newlines) in ids and captions are shown escaped.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text) -> str:
    """``text`` with every control character written as an escape, e.g. \\x1b."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode(),
                        str(text if text is not None else ""))


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        print(f"catalog-index query: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = _OneLineParser(prog="catalog-index query", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, metavar="ROOT",
                        help="output root of the build (local or gs://)")
    parser.add_argument("--version", metavar="ID", help="a version id (default: LATEST)")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", metavar="PATH", help="an image file, local or gs://")
    query.add_argument("--item-id", "--item_id", dest="item_id", metavar="ID",
                       help="an indexed item: more like it")
    query.add_argument("--text", help="words to match against captions and titles")
    parser.add_argument("-k", type=int, default=10,
                        help=f"number of results (default 10, at most {MAX_K:,})")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of {item_id, score, ...}, best first")
    args = parser.parse_args(argv)
    if not 1 <= args.k <= MAX_K:
        parser.error(f"-k must be between 1 and {MAX_K:,}")
    if args.item_id is not None and not args.item_id.strip():
        parser.error("--item-id must not be empty")
    return args


def run(argv: Optional[List[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        index = PublishedIndex.open(args.index, args.version)
        if args.image:
            hits = index.query_image(read_image_bytes(args.image), args.k)
        elif args.item_id:
            hits = index.query_item(args.item_id, args.k)
        else:
            hits = index.query_text(args.text, args.k)
    except (OSError, KeyError, IndexIntegrityError, ModelMismatchError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"catalog-index query: error: {message}", file=sys.stderr)
        return 1
    results = [{"item_id": hit.item_id, "score": round(hit.score, 6),
                **{key: value for key, value in hit.metadata.items()
                   if key not in ("item_id",)}} for hit in hits]
    if args.json:
        print(json.dumps(results, default=str))
    else:
        for result in results:
            print(f"{result['score']:8.4f}  {printable(result['item_id']):<24} "
                  f"{printable(result.get('caption'))}")
    return 0


def main() -> None:
    sys.exit(run())
