"""The one reader of what a root publishes: ``LATEST``, each version's ``manifest.json``, and
the files a manifest vouches for. The build's planning, ``--projection-from``, the reader,
rollback and prune all read through here, local roots and gs:// alike.

    latest = read_latest(root)                 # Latest(path, version_id or None, token)
    manifest = read_manifest(root, "20261201")  # a dict; FileNotFoundError if incomplete
    data = verified_bytes(folder, manifest["projection"])  # checked against its sha256
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import List, Optional

from catalog_index import storage
from catalog_index.schema import (LATEST_FILE, MANIFEST_FILE, VERSIONS_DIR, InvalidVersionId,
                                  check_version_file, check_version_id, join, version_dir)


class VersionError(ValueError):
    """LATEST, a manifest or a file of a version is not what it must be; the message names
    the file and says why."""


@dataclasses.dataclass(frozen=True)
class Latest:
    """What ``ROOT/LATEST`` holds: the published version's id (None: nothing published yet)
    and the token a publication must present to replace it (storage.replace_latest)."""

    path: str
    version_id: Optional[str]
    token: object


def read_latest(root: str) -> Latest:
    """``ROOT/LATEST``. Raises VersionError when it is not text or not a version id."""
    path = join(root, LATEST_FILE)
    try:
        content, token = storage.read_latest(path)
    except UnicodeDecodeError:
        raise VersionError(f"{path} is not text; fix it with catalog-index rollback") from None
    if content is None or not content.strip():
        return Latest(path, None, token)
    try:
        return Latest(path, check_version_id(content.strip()), token)
    except InvalidVersionId as error:
        raise VersionError(f"{path} does not hold a version id ({error}); fix it with "
                           "catalog-index rollback") from None


def read_manifest_at(folder: str) -> dict:
    """The manifest of the version in ``folder``. Raises FileNotFoundError when the folder
    has none (a build still running, or one that stopped), VersionError when it is not a
    JSON object."""
    path = join(folder, MANIFEST_FILE)
    try:
        manifest = json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: no {MANIFEST_FILE} (not a complete version)") \
            from None
    except (ValueError, UnicodeDecodeError) as error:
        raise VersionError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise VersionError(f"{path}: not a JSON object")
    return manifest


def read_manifest(root: str, version_id: str) -> dict:
    """The manifest of ``version_id`` under ``root`` (see :func:`read_manifest_at`)."""
    return read_manifest_at(version_dir(root, version_id))


def verified_bytes(folder: str, entry: dict) -> bytes:
    """The bytes of the file a manifest entry ({file, sha256}) names inside ``folder``,
    checked against the sha256 the entry gives. Raises VersionError."""
    try:
        relative = check_version_file(entry["file"])
    except (KeyError, TypeError, InvalidVersionId) as error:
        raise VersionError(f"{join(folder, MANIFEST_FILE)}: {error}") from None
    try:
        data = storage.read_bytes(join(folder, relative))
    except FileNotFoundError:
        raise VersionError(f"{join(folder, relative)} is missing") from None
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise VersionError(f"{relative} does not match the sha256 in its manifest")
    return data


def version_ids(root: str) -> List[str]:
    """The folders under ``ROOT/versions/`` whose names are version ids, complete or not."""
    found = []
    for name in storage.list_folders(join(root, VERSIONS_DIR)):
        try:
            found.append(check_version_id(name))
        except InvalidVersionId:
            continue  # not a version's folder: not ours to judge
    return found
