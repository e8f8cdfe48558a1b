"""``catalog-index prune``: delete old version folders, never one that readers or a rollback
need (:data:`DESCRIPTION` is its ``--help``, which says what is kept)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import List, Optional

from catalog_index import storage, versions
from catalog_index.cli import OneLineParser, UsageError, whole_number
from catalog_index.schema import MANIFEST_FILE, join, version_dir

DESCRIPTION = """\
Delete old versions under ROOT/versions/, keeping what readers and rollbacks need.

  catalog-index prune --index ROOT --keep N [--dry-run]

Kept:
  - the version LATEST names (the published one), whatever N is;
  - the N newest validated versions (by created_at, then id): what a rollback can go back
    to, and forward again after a rollback;
  - versions that failed validation after the published one: the last nights' failures,
    for inspection (report.html, errors/);
  - folders without manifest.json, never touched: a build still running, or one that
    stopped (remove those by hand, or rebuild the id with --replace).
Deleted: the other validated versions, and versions that failed validation before the
published one.

One line per version says what happens to it and why. A reader that opened a version
before it was deleted keeps working (docs/operations.md); opening it afterwards fails.
"""


class LatestChanged(RuntimeError):
    """LATEST changed while prune ran: its plan may no longer hold."""


@dataclass
class Version:
    version_id: str
    manifest: Optional[dict]  # None: no manifest.json, or one that cannot be read
    unreadable: Optional[str] = None  # why the manifest could not be read

    @property
    def validated(self) -> bool:
        return bool((self.manifest.get("validation") or {}).get("passed"))

    @property
    def order(self) -> tuple:
        """Oldest first: by created_at (UTC, ISO 8601), then by id."""
        return str(self.manifest.get("created_at") or ""), self.version_id


@dataclass
class Decision:
    version_id: str
    action: str  # keep, delete, leave (not a complete version: never touched)
    reason: str


def _count(text: str) -> int:
    value = whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = OneLineParser(prog="catalog-index prune", description=DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, metavar="ROOT",
                        help="output root of the builds (local or gs://)")
    parser.add_argument("--keep", required=True, type=_count, metavar="N",
                        help="keep the N newest validated versions, and the published "
                             "one always (0: the published one only)")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="say what would be deleted, delete nothing")
    return parser.parse_args(argv)


def read_latest(root: str) -> str:
    """The version LATEST names; ValueError when there is none or it is not a version id."""
    try:
        latest = versions.read_latest(root)
    except versions.VersionError as error:
        raise ValueError(str(error)) from None
    if latest.version_id is None:
        raise ValueError(f"{latest.path}: no published version, so nothing to keep versions "
                         "against; nothing deleted")
    return latest.version_id


def list_versions(root: str) -> List[Version]:
    """Every folder under ROOT/versions/ whose name is a version id, with its manifest."""
    found = []
    for name in versions.version_ids(root):
        try:
            found.append(Version(name, versions.read_manifest(root, name)))
        except FileNotFoundError:
            found.append(Version(name, None))
        except versions.VersionError as error:
            found.append(Version(name, None, str(error)[:200]))
    return found


def plan(listed: List[Version], latest: str, keep: int) -> List[Decision]:
    """What to do with each version, oldest first (the order they are deleted in); folders
    without a manifest last."""
    complete = sorted((v for v in listed if v.manifest is not None), key=lambda v: v.order)
    published = next((v for v in complete if v.version_id == latest), None)
    if published is None:
        raise ValueError(f"LATEST names {latest}, which is not a complete version (no "
                         "manifest.json); fix LATEST with catalog-index rollback first; "
                         "nothing deleted")
    rollback_targets = [v.version_id for v in reversed(complete) if v.validated][:keep]
    decisions = []
    for version in complete:
        if version.version_id == latest:
            decision = "keep", "published: LATEST names it"
        elif version.version_id in rollback_targets:
            decision = "keep", (f"validated, one of the {keep} newest: a rollback target")
        elif not version.validated and version.order > published.order:
            decision = "keep", ("failed validation after the published version: kept for "
                                "inspection")
        elif version.validated:
            decision = "delete", f"validated, older than the {keep} newest"
        else:
            decision = "delete", "failed validation before the published version"
        decisions.append(Decision(version.version_id, *decision))
    for version in listed:
        if version.manifest is None:
            why = f"manifest.json cannot be read ({version.unreadable})" if version.unreadable \
                else "no manifest.json: a build still running, or one that stopped"
            decisions.append(Decision(version.version_id, "leave",
                                      f"{why}; not touched"))
    return decisions


def delete_version(root: str, version_id: str, latest: str) -> None:
    """Delete one version's folder, its manifest first: from then on a rollback refuses the
    version. If LATEST named it meanwhile (a rollback that had read the manifest just
    before), the manifest is put back and LatestChanged raised."""
    if read_latest(root) != latest:
        raise LatestChanged()
    folder = version_dir(root, version_id)
    manifest_path = join(folder, MANIFEST_FILE)
    manifest = storage.read_bytes(manifest_path)
    storage.delete_file(manifest_path)
    if read_latest(root) != latest:
        storage.write_bytes(manifest_path, manifest)
        raise LatestChanged()
    storage.delete_tree(folder)
    if storage.exists(folder):
        raise OSError(f"{folder}: could not delete all of it")


def run(argv: Optional[List[str]] = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(f"catalog-index prune: error: {error}", file=sys.stderr)
        return 2
    try:
        latest = read_latest(args.index)
        decisions = plan(list_versions(args.index), latest, args.keep)
        deleted = 0
        for decision in decisions:
            action = decision.action
            if action == "delete":
                if args.dry_run:
                    action = "would delete"
                else:
                    delete_version(args.index, decision.version_id, latest)
                    deleted += 1
            print(f"{action:<12}  {decision.version_id}  {decision.reason}", flush=True)
    except LatestChanged:
        print(f"catalog-index prune: error: LATEST changed while pruning (a build published, "
              f"or a rollback); stopped after deleting {deleted}: run prune again",
              file=sys.stderr)
        return 1
    except (OSError, ValueError) as error:
        print(f"catalog-index prune: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 (the storage client's own errors: one line)
        print(f"catalog-index prune: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
