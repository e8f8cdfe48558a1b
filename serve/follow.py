"""Follow ``ROOT/LATEST``: the version in service, swapped for a newly published (or rolled
back to) one without failing a request.

    follower = Follower(root, poll_seconds=5)
    follower.start()                 # opens LATEST's version in the background, then polls
    with follower.pinned() as served:   # the version a request runs on, to its end
        served.index.query_text("red dress")
    follower.reload_now()            # SIGHUP: look at LATEST now

A new version is opened with :meth:`PublishedIndex.open` (every file checked against the
manifest) and warmed up (its query model loaded) on the follower's thread, while the old
one answers; then one reference is swapped. The old version is retired: requests already
running on it finish there, and the last one to finish closes it (its shard pool shut
down, its files unmapped). A version that cannot be opened is refused: the old one stays
in service, and :meth:`Follower.status` says which version was refused and why; it is
tried again after ``retry_seconds``, or at once on :meth:`reload_now`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import threading
import time
from typing import Callable, Iterator, Optional

from catalog_index import versions
from search.index import PublishedIndex

log = logging.getLogger("catalog_index.serve")

DEFAULT_POLL_SECONDS = 5.0
DEFAULT_RETRY_SECONDS = 60.0


class NotReady(RuntimeError):
    """No verified version is loaded (yet): nothing can answer."""


class Served:
    """One opened version and the requests running on it."""

    def __init__(self, index: PublishedIndex, swap_seconds: float):
        self.index, self.version_id = index, index.version_id
        self.swap_seconds = swap_seconds
        self.loaded_at = time.time()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._retired = False
        self.released = threading.Event()  # set once the version is closed
        self.cached = {}  # what the server derives from the version once (its changes)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def acquire(self) -> bool:
        """Count a new request on this version; False once it is retired (the caller takes
        the version now in service instead)."""
        with self._lock:
            if self._retired:
                return False
            self._in_flight += 1
            return True

    def hold(self) -> None:
        """One more hold by a request that holds the version already (its query's thread,
        which may outlive the request when the request times out)."""
        with self._lock:
            if self._in_flight <= 0:
                raise RuntimeError(f"version {self.version_id} is not held")
            self._in_flight += 1

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1
            close = self._retired and self._in_flight == 0
        if close:
            self._close()

    def retire(self) -> None:
        """No new request starts on this version; it closes when the last one ends."""
        with self._lock:
            self._retired = True
            close = self._in_flight == 0
        if close:
            self._close()

    def _close(self) -> None:
        if self.released.is_set():
            return
        self.index.close()
        self.cached.clear()
        gc.collect()  # what still pointed at the mappings in a reference cycle
        self.released.set()
        log.info("version %s released", self.version_id)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A version that could not be put into service, and why (one line)."""
    version_id: Optional[str]
    reason: str
    at: float


class Follower:
    """The version in service for one process, following ``ROOT/LATEST``.

    ``on_swap(old version id or None, new Served)`` and ``on_refusal(Refusal)`` are told of
    each swap and each refusal (the server's metrics)."""

    def __init__(self, root: str, poll_seconds: float = DEFAULT_POLL_SECONDS,
                 cache_dir: Optional[str] = None,
                 retry_seconds: float = DEFAULT_RETRY_SECONDS,
                 on_swap: Callable[[Optional[str], Served], None] = lambda old, new: None,
                 on_refusal: Callable[[Refusal], None] = lambda refusal: None,
                 on_refusal_cleared: Callable[[Refusal], None] = lambda refusal: None):
        self.root, self.poll_seconds, self.cache_dir = root, poll_seconds, cache_dir
        self.retry_seconds = retry_seconds
        self.on_swap, self.on_refusal = on_swap, on_refusal
        self.on_refusal_cleared = on_refusal_cleared
        self.current: Optional[Served] = None
        self.refused: Optional[Refusal] = None
        self.last_check: Optional[float] = None
        self.swaps = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._forced = False
        self._check_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    # --- requests -------------------------------------------------------------------------

    def pin(self) -> Served:
        """The version in service, counted as one more request on it (:meth:`Served.release`
        when done). Raises NotReady when none is loaded."""
        while True:
            served = self.current
            if served is None:
                raise NotReady(self.not_ready_reason())
            if served.acquire():
                return served
            # retired between the read and the count: the new one is in self.current now

    @contextlib.contextmanager
    def pinned(self) -> Iterator[Served]:
        served = self.pin()
        try:
            yield served
        finally:
            served.release()

    def not_ready_reason(self) -> str:
        if self.refused is not None:
            return (f"no version in service: version {self.refused.version_id} was refused: "
                    f"{self.refused.reason}")
        return "no version in service yet: the first one is being opened"

    # --- following LATEST ---------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="follow-latest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def reload_now(self) -> None:
        """Look at LATEST now, and try again a version refused before (SIGHUP)."""
        self._forced = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            forced, self._forced = self._forced, False
            try:
                self.check(force=forced)
            except Exception:  # never let the follower die: the old version keeps serving
                log.exception("checking LATEST failed")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def check(self, force: bool = False) -> Optional[Served]:
        """Read LATEST; open and swap in the version it names when that is not the one in
        service. Returns the version swapped in, if any."""
        with self._check_lock:
            self.last_check = time.time()
            try:
                version_id = versions.read_latest(self.root).version_id
                if version_id is None:
                    raise FileNotFoundError(f"{self.root}: no published version (no LATEST)")
            except (OSError, ValueError) as error:
                self._refuse(None, f"LATEST could not be read: {_one_line(error)}")
                return None
            current = self.current
            if current is not None and current.version_id == version_id:
                self._clear_refusal()
                return None
            refused = self.refused
            if refused is not None and refused.version_id == version_id and not force \
                    and time.time() - refused.at < self.retry_seconds:
                return None
            return self._open_and_swap(version_id)

    def _open_and_swap(self, version_id: str) -> Optional[Served]:
        started = time.perf_counter()
        log.info("opening version %s", version_id)
        try:
            index = PublishedIndex.open(self.root, version_id, cache_dir=self.cache_dir)
            try:
                _warm_up(index)
            except BaseException:
                index.close()
                raise
        except Exception as error:  # a refused version never takes the old one down
            self._refuse(version_id, _one_line(error))
            return None
        served = Served(index, time.perf_counter() - started)
        old, self.current = self.current, served
        self.swaps += old is not None
        self._clear_refusal()
        log.info("version %s in service (opened in %.2f s)%s", version_id,
                 served.swap_seconds, f"; version {old.version_id} retired" if old else "")
        self.on_swap(old.version_id if old else None, served)
        if old is not None:
            old.retire()
        return served

    def _refuse(self, version_id: Optional[str], reason: str) -> None:
        previous = self.refused
        self.refused = Refusal(version_id, reason, time.time())
        if previous is None or (previous.version_id, previous.reason) != (version_id, reason):
            log.warning("version %s refused: %s", version_id or "(none)", reason)
            if previous is not None:
                self.on_refusal_cleared(previous)
            self.on_refusal(self.refused)

    def _clear_refusal(self) -> None:
        if self.refused is not None:
            previous, self.refused = self.refused, None
            self.on_refusal_cleared(previous)

    def status(self) -> dict:
        """What /readyz says."""
        current = self.current
        refused = self.refused
        return {
            "ready": current is not None,
            "version": current.version_id if current else None,
            "items": len(current.index) if current else None,
            "loaded_at": current.loaded_at if current else None,
            "swap_seconds": round(current.swap_seconds, 3) if current else None,
            "swaps": self.swaps,
            "last_check": self.last_check,
            "refused": None if refused is None else {
                "version": refused.version_id, "reason": refused.reason, "at": refused.at},
        }


def _warm_up(index: PublishedIndex) -> None:
    """What the first queries on a new version would otherwise wait for: its query model,
    where the version carries one (a version without one loads TensorFlow on its first
    image query, as the library does)."""
    if index.manifest.get("query_model"):
        index.model()


def _one_line(error: BaseException) -> str:
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    return " ".join(str(message).split()) or type(error).__name__
