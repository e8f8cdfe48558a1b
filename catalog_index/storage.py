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
import shutil
import stat
import tempfile
import threading
import time
from concurrent import futures
from typing import Iterator, List, Optional, Tuple

from requests.adapters import HTTPAdapter


class StorageError(OSError):
    pass


def is_gcs(path: str) -> bool:
    return path.startswith("gs://")


def split_gcs(path: str) -> Tuple[str, str]:
    bucket, _, name = path[len("gs://"):].partition("/")
    return bucket, name


# Downloads a worker overlaps at most: the HTTP connection pool is sized to match.
MAX_CONCURRENT_REQUESTS = 64

# How long one GCS call is retried (408, 429, 5xx, dropped connections), with the client's
# exponential backoff, before it fails.
RETRY_SECONDS = 120.0


def retry():
    """The client's DEFAULT_RETRY, over RETRY_SECONDS. Every call made with it is idempotent:
    reads, whole-object writes (the same bytes again), and LATEST's conditional write."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(RETRY_SECONDS)


class PublishConflict(StorageError):
    """LATEST changed since this build read it: another build published first."""


def using_emulator() -> bool:
    return bool(os.environ.get("STORAGE_EMULATOR_HOST"))


@functools.lru_cache(maxsize=1)
def gcs_client():
    """One client per process (it is thread-safe), with a connection pool large enough for
    MAX_CONCURRENT_REQUESTS parallel downloads."""
    from google.cloud import storage

    if using_emulator():
        from google.auth.credentials import AnonymousCredentials

        client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "test"),
                                credentials=AnonymousCredentials())
    else:
        try:
            client = storage.Client()
        except Exception as error:  # google.auth.exceptions.DefaultCredentialsError and friends
            raise StorageError(
                "no Google Cloud credentials for gs:// paths: run `gcloud auth "
                "application-default login` or set GOOGLE_APPLICATION_CREDENTIALS "
                f"({type(error).__name__})") from None
    adapter = HedgingAdapter(pool_connections=4, pool_maxsize=MAX_CONCURRENT_REQUESTS)
    client._http.mount("https://", adapter)
    client._http.mount("http://", adapter)
    return client


# A request with no answer (status line and headers) after this long is sent once more, and
# whichever answer comes first is used: "hedged requests" (Dean and Barroso, The Tail at
# Scale, 2013). GCS answers small requests in tens of milliseconds; a rare slow one would
# otherwise hold up every step that waits for it.
HEDGE_AFTER_SECONDS = 0.5
HEDGE_COPIES = 3  # sent at 0, 0.5 and 1 s
# Uploads are hedged only when their whole body is at most this large (multipart uploads).
HEDGE_MAX_UPLOAD_BYTES = 1 << 20


def _hedgeable(request) -> bool:
    """Reads, and small whole-object uploads: requests that may safely run twice. (The only
    conditional write, :func:`replace_latest`, takes a 412 on its own content as success.)"""
    if request.method in ("GET", "HEAD"):
        return True
    return (request.method == "POST" and "uploadType=multipart" in request.url
            and isinstance(request.body, bytes) and len(request.body) <= HEDGE_MAX_UPLOAD_BYTES)


class HedgingAdapter(HTTPAdapter):
    """requests' HTTPAdapter that hedges idempotent requests: one more copy each
    HEDGE_AFTER_SECONDS without an answer, HEDGE_COPIES at most. The first answer wins; the
    others are closed as they come, which returns their connections to the pool. An error
    is raised once every copy has failed (the client's retry policy takes it from there)."""

    def send(self, request, **kwargs):
        if not _hedgeable(request):
            return super().send(request, **kwargs)
        copies = [_on_daemon_thread(super().send, request, **kwargs)]
        pending, failed = set(copies), []
        while pending:
            done, pending = futures.wait(pending, timeout=HEDGE_AFTER_SECONDS,
                                         return_when=futures.FIRST_COMPLETED)
            answered = [copy for copy in done if copy.exception() is None]
            if answered:
                for other in copies:
                    if other is not answered[0]:
                        other.add_done_callback(_close_answer)
                return answered[0].result()
            failed.extend(done)
            if not done and len(copies) < HEDGE_COPIES:
                copies.append(_on_daemon_thread(super().send, request.copy(), **kwargs))
                pending.add(copies[-1])
        return failed[0].result()  # raises the first copy's error


def _on_daemon_thread(call, *args, **kwargs) -> futures.Future:
    """``call(*args, **kwargs)`` on a thread of its own that does not hold up the process's
    exit, as a copy still waiting for a slow answer would in a concurrent.futures pool (they
    join their threads at exit). A thread costs tens of microseconds; a request, milliseconds."""
    future = futures.Future()

    def run():
        future.set_running_or_notify_cancel()
        try:
            future.set_result(call(*args, **kwargs))
        except BaseException as error:  # handed to the caller, like a pool's future
            future.set_exception(error)

    threading.Thread(target=run, name="gcs-request", daemon=True).start()
    return future


def _close_answer(copy) -> None:
    if copy.exception() is None:
        copy.result().close()


def _blob(path: str):
    bucket, name = split_gcs(path)
    return gcs_client().bucket(bucket).blob(name)


def read_bytes(path: str) -> bytes:
    """The whole object. On GCS, 408/429/5xx and dropped connections are retried with
    exponential backoff (:func:`retry`); a missing object is FileNotFoundError."""
    if is_gcs(path):
        from google.api_core import exceptions

        try:
            return _blob(path).download_as_bytes(retry=retry())
        except exceptions.NotFound:
            raise FileNotFoundError(f"no such object: {path}") from None
    with open(path, "rb") as stream:
        return stream.read()


def open_read(path: str):
    """A seekable binary stream over a whole object or file, read in chunks as it is used."""
    if is_gcs(path):
        from google.api_core import exceptions

        try:
            return _blob(path).open("rb", retry=retry())
        except exceptions.NotFound:
            raise FileNotFoundError(f"no such object: {path}") from None
    return open(path, "rb")


def parquet_batches(source, batch_size: int, columns=None):
    """The record batches of a Parquet file (a local path or an open binary stream), a row
    group's pages in memory at a time. ParquetFile's ``pre_buffer`` (on by default) keeps
    every row group it has read until the file is closed: streaming one 1.2 GB embeddings
    shard (250,000 x 1,280) grew to 1.3 GB of RSS; without it, 0.4 GB. The nightly build
    streams four of them side by side."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(source, pre_buffer=False) as parquet:
        yield from parquet.iter_batches(batch_size=batch_size, columns=columns)


# Image files above this are refused before they are read (the build's --max-image-bytes).
DEFAULT_MAX_IMAGE_BYTES = 50 * 2**20


class ImageFileError(StorageError):
    """Not a file to read as an image: not a regular file, or larger than the limit."""


class UnsupportedUri(StorageError):
    """An image URI of a scheme other than gs:// or a local path."""


def read_image_bytes(path: str, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
    """A whole image file or object, bounded: a local path or gs:// only, regular files and
    objects only (never a FIFO, device or folder, which could block or never end), and at
    most ``max_bytes``, checked before the read and enforced during it."""
    if not is_gcs(path) and "://" in path:
        raise UnsupportedUri(f"unsupported URI scheme {path.split('://')[0][:20]!r}: image "
                             "URIs are local paths or gs://")
    if is_gcs(path):
        from google.api_core import exceptions

        try:  # one request: the first max_bytes + 1 bytes say whether it is too large
            data = _blob(path).download_as_bytes(start=0, end=max_bytes, retry=retry())
        except exceptions.NotFound:
            raise FileNotFoundError(f"no such object: {path}") from None
        except exceptions.RequestRangeNotSatisfiable:
            return b""  # an empty object
        if len(data) > max_bytes:
            raise ImageFileError(f"larger than the {max_bytes:,}-byte limit")
        return data
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):
        raise ImageFileError("not a regular file (a folder, FIFO or device)")
    if status.st_size > max_bytes:
        raise ImageFileError(f"{status.st_size:,} bytes, larger than the {max_bytes:,}-byte limit")
    with open(path, "rb") as stream:
        data = stream.read(max_bytes + 1)  # the file may have grown since stat
    if len(data) > max_bytes:
        raise ImageFileError(f"larger than the {max_bytes:,}-byte limit")
    return data


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole object; locally through a temporary file and a rename, so a reader
    never sees half a file (GCS objects are atomic by nature)."""
    if is_gcs(path):
        _blob(path).upload_from_string(data, retry=retry())
        return

    def write(tmp):
        with open(tmp, "wb") as stream:
            stream.write(data)

    atomic_local_write(path, write)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_local_write(path: str, write) -> None:
    """``write(tmp_path)`` then rename, so that concurrent processes never see (or clash on)
    a partial file. The temporary name ends with the final name, extension included (Keras
    insists on ``.keras``); the file gets the usual permissions (mkstemp makes it 0600)."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, suffix=os.path.basename(path))
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def upload_file(local_path: str, path: str) -> None:
    """Copy a local file (a shard: possibly gigabytes) to ``path`` without reading it whole."""
    if is_gcs(path):
        _blob(path).upload_from_filename(local_path, retry=retry())
        return
    atomic_local_write(path, lambda tmp: shutil.copyfile(local_path, tmp))


def download_file(path: str, local_path: str) -> None:
    if is_gcs(path):
        _blob(path).download_to_filename(local_path, retry=retry())
        return
    shutil.copyfile(path, local_path)


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


def list_folders(prefix: str) -> List[str]:
    """The names of the folders directly under ``prefix``, sorted (on GCS: the prefixes
    that objects below it share up to the next "/"); none when it does not exist."""
    if is_gcs(prefix):
        bucket, name = split_gcs(prefix)
        name = name.rstrip("/") + "/" if name.strip("/") else ""
        pages = gcs_client().list_blobs(bucket, prefix=name, delimiter="/", retry=retry())
        for _ in pages:  # the prefixes arrive with the pages of objects
            pass
        return sorted(folder[len(name):].rstrip("/") for folder in pages.prefixes)
    try:
        return sorted(entry.name for entry in os.scandir(prefix)
                      if entry.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def delete_file(path: str) -> None:
    """Delete one file or object; one already gone is not an error."""
    if is_gcs(path):
        from google.api_core import exceptions

        try:
            _blob(path).delete(retry=retry())
        except exceptions.NotFound:
            pass
        return
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def local_stamp(path: str) -> Optional[str]:
    """What a local file's status says of its content, without reading it (None for no
    regular file). Incremental builds re-read a file whose stamp changed; an equal stamp
    is trusted, as make and rsync trust it."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(status.st_mode):
        return None
    return f"size={status.st_size} mtime_ns={status.st_mtime_ns}"


def _object_stamp(blob) -> str:
    """An object's size and checksums, from its listing (a composite object has no md5)."""
    return f"size={blob.size} crc32c={blob.crc32c} md5={blob.md5_hash or '-'}"


def list_stamps(folder: str) -> Iterator[Tuple[str, str]]:
    """(gs:// URI, stamp) of every object directly in a gs:// folder: a thousand objects a
    request, each with the size and checksums GCS keeps, never their bytes."""
    bucket, name = split_gcs(folder)
    prefix = name.rstrip("/") + "/" if name.strip("/") else ""
    blobs = gcs_client().list_blobs(
        bucket, prefix=prefix, delimiter="/", retry=retry(),
        fields="items(name,size,crc32c,md5Hash),nextPageToken")
    for blob in blobs:
        yield f"gs://{bucket}/{blob.name}", _object_stamp(blob)


def sha256_of_file(path: str) -> str:
    """Hex sha256 of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def delete_tree(prefix: str) -> None:
    """Remove a folder and everything below it."""
    if is_gcs(prefix):
        bucket, name = split_gcs(prefix)
        for blob in gcs_client().list_blobs(bucket, prefix=name.rstrip("/") + "/"):
            blob.delete()
        return
    shutil.rmtree(prefix, ignore_errors=True)


def read_latest(path: str) -> Tuple[Optional[str], object]:
    """-> (content or None, token). Pass the token to :func:`replace_latest` so that it only
    succeeds if nobody rewrote the file in between (the GCS generation; locally, the content)."""
    if is_gcs(path):
        blob = gcs_client().bucket(split_gcs(path)[0]).get_blob(split_gcs(path)[1])
        return (None, 0) if blob is None else (blob.download_as_text(), blob.generation)
    content = read_optional_text(path)
    return content, content


def replace_latest(path: str, text: str, token) -> None:
    """Write ``text`` if the file is unchanged since :func:`read_latest` gave ``token``;
    else raise :class:`PublishConflict`. Writing what is already there succeeds (a retry)."""
    if is_gcs(path):
        from google.api_core import exceptions

        try:
            _blob(path).upload_from_string(text, if_generation_match=token, retry=retry())
        except exceptions.PreconditionFailed:
            current = read_optional_text(path)
            if current != text:
                raise _conflict(path, current) from None
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    handle = _acquire_lock(path + ".lock")
    try:
        current = read_optional_text(path)
        if current != token and current != text:
            raise _conflict(path, current)
        write_text(path, text)
    finally:
        os.close(handle)  # which releases the lock


def _conflict(path: str, current: Optional[str]) -> PublishConflict:
    return PublishConflict(f"{path} changed since this build started "
                           f"(it now names {(current or '').strip()!r})")


def _acquire_lock(lock: str, timeout: float = 30.0) -> int:
    """An exclusive lock on the file ``lock`` (created if need be), held until the returned
    descriptor is closed. The system releases it when its process dies: a build killed
    while publishing leaves no lock behind (the file stays, unlocked)."""
    import fcntl

    handle = os.open(lock, os.O_CREAT | os.O_WRONLY, 0o666 & ~_umask())
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(handle)
                raise PublishConflict(f"{lock} is held by another build that is publishing")
            time.sleep(0.05)


def read_optional_text(path: str) -> Optional[str]:
    try:
        return read_text(path)
    except FileNotFoundError:
        return None
