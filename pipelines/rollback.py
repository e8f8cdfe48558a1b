"""catalog-index rollback: point LATEST at an earlier, validated version.

    catalog-index rollback --index ROOT --version ID [--force]

The version must be complete (manifest.json) and must have passed validation, unless
--force. LATEST is replaced under the same precondition as a build's publication, so a
rollback never silently overwrites a build that published a moment earlier.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from catalog_index import storage, versions
from catalog_index.cli import OneLineParser, UsageError
from catalog_index.schema import LATEST_FILE, InvalidVersionId, check_version_id, join


def run(argv: Optional[List[str]] = None) -> int:
    parser = OneLineParser(prog="catalog-index rollback", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, metavar="ROOT", help="output root (local or gs://)")
    parser.add_argument("--version", required=True, metavar="ID", help="the version to publish")
    parser.add_argument("--force", action="store_true",
                        help="publish a version even though it failed validation")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        check_version_id(args.version)
    except InvalidVersionId as error:
        print(f"catalog-index rollback: error: --version: {error}", file=sys.stderr)
        return 2
    except UsageError as error:
        print(f"catalog-index rollback: error: {error}", file=sys.stderr)
        return 2
    latest_path = join(args.index, LATEST_FILE)
    try:
        # LATEST as it is, whatever it holds: rolling back is how a bad one is fixed.
        current, token = storage.read_latest(latest_path)
        manifest = versions.read_manifest(args.index, args.version)
        if not manifest.get("validation", {}).get("passed") and not args.force:
            raise ValueError(f"version {args.version} failed validation ("
                             + "; ".join(manifest.get("validation", {}).get("problems", []))
                             + "); pass --force to publish it anyway")
        storage.replace_latest(latest_path, args.version + "\n", token)
    except FileNotFoundError:
        print(f"catalog-index rollback: error: version {args.version} has no manifest.json "
              "(missing or incomplete)", file=sys.stderr)
        return 1
    except (ValueError, storage.StorageError) as error:
        print(f"catalog-index rollback: error: {error}", file=sys.stderr)
        return 1
    print(f"{latest_path}: {(current or 'nothing').strip()} -> {args.version}")
    return 0


if __name__ == "__main__":
    sys.exit(run())
