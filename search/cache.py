"""The reader's cache of a version: every file the reader reads, checked against the
manifest's sha256 once and remembered, and each metadata Parquet once more as an Arrow IPC
file that the reader memory-maps.

A version's cache folder is ``<cache_dir>/<first 16 hex of sha256(version path)>/``: for a
gs:// version it holds the downloaded files; for a local version (read in place) only
what is derived here. In it, ``verified.json`` records each file checked: its sha256 and
what its status said then (size, mtime_ns, ctime_ns, inode). An open trusts a file whose
status still says the same, and hashes every other file again; a file that no longer
matches the manifest is downloaded again (gs://) or refused (local).

What that trusts (docs/operations.md, "The reader's local cache"): a change to a file
moves its mtime and ctime, and ctime cannot be set back (touch -d moves it forward); a
change that leaves size, times and inode as they were (the system clock set back, the
disk written beneath the file system, bits rotting on the disk) is not noticed after the
first check. Whoever can write the cache folder can also write the record.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from catalog_index import storage
from catalog_index.schema import join

RECORD_FILE = "verified.json"
RECORD_FORMAT = 1
ARROW_DIR = "arrow"  # the metadata as Arrow IPC files, under the version's cache folder
# A file whose mtime or ctime was this close to its check could have changed again within
# the same timestamp tick (a clock tick on Linux, 2 s on FAT): it is hashed again at the
# next open, as git reads "racily clean" files again.
RACY_NS = 2_000_000_000
STATUS_KEYS = ("size", "mtime_ns", "ctime_ns", "inode")


class CacheError(ValueError):
    """A file is missing or differs from what the manifest says (the reader turns this
    into an IndexIntegrityError naming the file)."""


def version_cache_dir(folder: str, cache_root: str) -> str:
    """The cache folder of the version at ``folder`` (a gs:// or local path)."""
    key = folder if storage.is_gcs(folder) else os.path.realpath(folder)
    return os.path.join(cache_root, hashlib.sha256(key.encode()).hexdigest()[:16])


def file_status(path: str) -> Optional[dict]:
    """What a regular file's status says of its content (None: missing, or not a file)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(status.st_mode):
        return None
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns,
            "ctime_ns": status.st_ctime_ns, "inode": status.st_ino}


def checked(path: str, digest: Optional[str]) -> Tuple[bool, Optional[dict]]:
    """Hash ``path`` against ``digest`` -> (matches, the record's entry for it, or None when
    there is nothing to remember: no digest, or the file changed while it was read)."""
    started = time.time_ns()
    before = file_status(path)
    if before is None:
        return False, None
    if digest is None:
        return True, None
    if storage.sha256_of_file(path) != digest:
        return False, None
    if file_status(path) != before:
        return True, None
    return True, {"sha256": digest, **before, "verified_ns": started}


class Record:
    """``verified.json`` of one version's cache folder: relative path -> {sha256, the
    file's status when it was checked, verified_ns: when the check began; ``written``:
    the cache wrote it, whole before its name appeared (a download, an Arrow copy)}."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, RECORD_FILE)
        self.entries: Dict[str, dict] = {}
        self._lock = threading.Lock()
        self._changed = False
        try:
            with open(self.path) as stream:
                record = json.load(stream)
            if record.get("format") == RECORD_FORMAT and isinstance(record.get("files"), dict):
                self.entries = record["files"]
        except (OSError, ValueError, AttributeError):
            pass  # no record, or not one this reader wrote: every file is checked

    def entry(self, relative: str) -> dict:
        entry = self.entries.get(relative)
        return entry if isinstance(entry, dict) else {}

    def trusted(self, relative: str, path: str, digest: Optional[str]) -> bool:
        """Whether ``path`` was checked against ``digest`` and its status has not changed
        since. A file that had changed less than RACY_NS before its check is not trusted,
        unless the cache wrote it itself."""
        entry = self.entry(relative)
        status = file_status(path)
        if not entry or entry.get("sha256") != digest or status is None \
                or any(entry.get(key) != status[key] for key in STATUS_KEYS):
            return False
        return bool(entry.get("written")) or \
            max(entry["mtime_ns"], entry["ctime_ns"]) + RACY_NS <= entry.get("verified_ns", 0)

    def remember(self, relative: str, entry: dict) -> None:
        with self._lock:
            self.entries[relative] = entry
            self._changed = True

    def forget(self, relative: str) -> None:
        with self._lock:
            self._changed |= self.entries.pop(relative, None) is not None

    def _still_good(self, key: str, path: str, entry: dict) -> bool:
        """Whether the Arrow copy at ``path`` is the one ``entry`` recorded (trusted by its
        status, else hashed)."""
        if not entry.get("sha256"):
            return False
        if self.record.trusted(key, path, entry["sha256"]):
            return True
        matches, fresh = checked(path, entry["sha256"])
        if matches and fresh:
            self.record.remember(key, {**entry, **fresh})
        return matches

    def save(self) -> None:
        """Write the record if anything changed. A cache that cannot be written only costs
        the next open its hashing again."""
        with self._lock:
            if not self._changed:
                return
            data = json.dumps({"format": RECORD_FORMAT, "files": self.entries}, sort_keys=True)
            self._changed = False
        try:
            storage.write_text(self.path, data)
        except OSError:
            pass


class VersionCache:
    """One version's files as a reader takes them: ``local_dir`` is where they are read
    (the cache folder for gs://, the version's own folder for a local path)."""

    def __init__(self, folder: str, cache_root: str):
        self.folder = folder
        self.path = version_cache_dir(folder, cache_root)
        self.local_dir = self.path if storage.is_gcs(folder) else folder
        self.record = Record(self.path)

    def fetch_and_verify(self, files: List[Tuple[str, Optional[str]]]) -> None:
        """Make every file (relative path, sha256 or None) available under ``local_dir``
        (for gs://: downloaded, unless the copy there is the manifest's) and check it,
        several files at a time (hashing releases the GIL); a file the record trusts is
        not read. Raises CacheError for a file missing or different."""
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(lambda entry: self._fetch_and_verify_file(*entry), files))
        self.record.save()

    def _fetch_and_verify_file(self, relative: str, digest: Optional[str]) -> None:
        local, remote = os.path.join(self.local_dir, relative), join(self.folder, relative)
        if self.record.trusted(relative, local, digest):
            return
        matches, entry = checked(local, digest)
        if not matches and storage.is_gcs(self.folder):
            try:
                storage.atomic_local_write(local, lambda tmp: storage.download_file(remote, tmp))
            except Exception as error:
                raise CacheError(f"{remote}: {error}") from None
            matches, entry = checked(local, digest)
            entry = entry and {**entry, "written": True}
        if not matches:
            self.record.forget(relative)
            if file_status(local) is None:
                raise CacheError(f"{remote} is missing")
            raise CacheError(f"{remote}: sha256 differs from the manifest")
        if entry is not None:
            self.record.remember(relative, entry)

    def metadata_table(self, relative: str, digest: Optional[str]) -> pa.Table:
        """The (verified) metadata Parquet ``relative`` as an Arrow table memory-mapped from
        its IPC copy in the cache: written once, a record batch per row group, and trusted
        as the version's files are; its buffers are pages of that file (the page cache),
        not the process's own memory. Where the cache cannot be written, the Parquet is
        read into memory instead."""
        parquet = os.path.join(self.local_dir, relative)
        target = os.path.join(self.path, ARROW_DIR, os.path.splitext(relative)[0] + ".arrow")
        key = os.path.relpath(target, self.path)
        # What the copy is made from: the Parquet's sha256, or its status without one.
        source = digest or json.dumps(file_status(parquet), sort_keys=True)
        entry = self.record.entry(key)
        if entry.get("from") != source or not self._still_good(key, target, entry):
            try:
                storage.atomic_local_write(target, lambda tmp: _write_arrow(parquet, tmp))
            except OSError:
                self.record.forget(key)
                return pq.read_table(parquet)
            self.record.remember(key, {"sha256": storage.sha256_of_file(target),
                                       "from": source, "written": True,
                                       **file_status(target)})
        with pa.memory_map(target) as mapped:
            return pa.ipc.open_file(mapped).read_all()

    def _still_good(self, key: str, path: str, entry: dict) -> bool:
        """Whether the Arrow copy at ``path`` is the one ``entry`` recorded (trusted by its
        status, else hashed)."""
        if not entry.get("sha256"):
            return False
        if self.record.trusted(key, path, entry["sha256"]):
            return True
        matches, fresh = checked(path, entry["sha256"])
        if matches and fresh:
            self.record.remember(key, {**entry, **fresh})
        return matches

    def save(self) -> None:
        """Write the record, and mark the folder used (its mtime, by which a cleanup by
        age goes: docs/operations.md)."""
        self.record.save()
        try:
            os.utime(self.path)
        except OSError:
            pass


def _write_arrow(parquet: str, path: str) -> None:
    """The Parquet file's table as an uncompressed Arrow IPC file (so that a memory map of
    it is the table), one row group in memory at a time."""
    source = pq.ParquetFile(parquet, pre_buffer=False)  # a row group at a time
    with pa.OSFile(path, "wb") as sink, \
            pa.ipc.new_file(sink, source.schema_arrow) as writer:
        for group in range(source.num_row_groups):
            writer.write_table(source.read_row_group(group))
