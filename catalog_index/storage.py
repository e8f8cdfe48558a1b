"""Read and write whole objects on local disk or Cloud Storage (``gs://``).

Local paths use the file system; ``gs://`` uses the official ``google-cloud-storage``
client, one per process, with Application Default Credentials, or anonymous credentials
when ``STORAGE_EMULATOR_HOST`` points at an emulator. Used by the build's final stages and
by the Beam-free search side alike.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from typing import List, Optional, Tuple


class StorageError(OSError):
    pass


def is_gcs(path: str) -> bool:
    return path.startswith("gs://")


def split_gcs(path: str) -> Tuple[str, str]:
    bucket, _, name = path[len("gs://"):].partition("/")
    return bucket, name


@functools.lru_cache(maxsize=1)
def gcs_client():
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "test"),
                              credentials=AnonymousCredentials())
    try:
        return storage.Client()
    except Exception as error:  # google.auth.exceptions.DefaultCredentialsError and friends
        raise StorageError(
            "no Google Cloud credentials for gs:// paths: run `gcloud auth application-default "
            f"login` or set GOOGLE_APPLICATION_CREDENTIALS ({type(error).__name__})") from None


def _blob(path: str):
    bucket, name = split_gcs(path)
    return gcs_client().bucket(bucket).blob(name)


def read_bytes(path: str) -> bytes:
    if is_gcs(path):
        from google.api_core import exceptions

        try:
            return _blob(path).download_as_bytes()
        except exceptions.NotFound:
            raise FileNotFoundError(path) from None
    with open(path, "rb") as stream:
        return stream.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole object; locally through a temporary file and a rename, so a reader
    never sees half a file (GCS objects are atomic by nature)."""
    if is_gcs(path):
        _blob(path).upload_from_string(data)
        return
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def upload_file(local_path: str, path: str) -> None:
    if is_gcs(path):
        _blob(path).upload_from_filename(local_path)
        return
    with open(local_path, "rb") as stream:
        write_bytes(path, stream.read())


def download_file(path: str, local_path: str) -> None:
    if is_gcs(path):
        _blob(path).download_to_filename(local_path)
        return
    with open(path, "rb") as source, open(local_path, "wb") as target:
        target.write(source.read())


def exists(path: str) -> bool:
    if is_gcs(path):
        bucket, name = split_gcs(path)
        if _blob(path).exists():
            return True
        prefix = name.rstrip("/") + "/"
        return any(True for _ in gcs_client().list_blobs(bucket, prefix=prefix, max_results=1))
    return os.path.exists(path)


def list_files(prefix: str) -> List[str]:
    """Every file under a folder, as full paths, sorted."""
    if is_gcs(prefix):
        bucket, name = split_gcs(prefix)
        name = name.rstrip("/") + "/"
        return sorted(f"gs://{bucket}/{blob.name}"
                      for blob in gcs_client().list_blobs(bucket, prefix=name))
    found = []
    for folder, _dirs, files in os.walk(prefix):
        found.extend(os.path.join(folder, name) for name in files)
    return sorted(found)


def sha256_of_file(path: str) -> str:
    """Hex sha256 of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_optional_text(path: str) -> Optional[str]:
    try:
        return read_text(path)
    except FileNotFoundError:
        return None
