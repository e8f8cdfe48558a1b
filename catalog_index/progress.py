"""Progress of a build in this process: every stage's counters also add up here, and a
reporter thread prints one line about every 10 seconds while the local build runs.

    progress: 12,345 of 70,000 items (17.6%), 183.2 images/s, 12 failed, ETA 5m15s

Until the first items are done and a second line can measure their rate, the rate is "not
known yet"; once every item is done, the line says the shards are being built.

Items are done when they are captioned (on their way to a shard), failed at any stage, or
dropped as duplicates. On a distributed runner the counters live on the workers; the
runner's own monitoring shows them there (Beam metrics, namespace ``catalog_index``).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Dict, Optional, TextIO


class Tally:
    """Thread-safe counts by name, for this process."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: Dict[str, int] = collections.Counter()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


TALLY = Tally()


def items_done(counts: Dict[str, int]) -> int:
    failed = sum(count for name, count in counts.items() if name.startswith("failed_"))
    return (counts.get("captioned", 0) + counts.get("reused", 0) + failed
            + counts.get("duplicate", 0))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def progress_line(counts: Dict[str, int], images_per_second: Optional[float]) -> str:
    """One line; ``images_per_second`` None while it cannot be measured yet (the first
    items have only just finished)."""
    total, done = counts.get("read", 0), items_done(counts)
    if not total:
        return "progress: reading the catalog"
    failed = sum(count for name, count in counts.items() if name.startswith("failed_"))
    rate = "images/s not known yet" if images_per_second is None else \
        f"{images_per_second:.1f} images/s"
    line = f"progress: {done:,} of {total:,} items ({done / total:.1%}), {rate}, {failed:,} failed"
    if done >= total:
        return line + ", building the shards"
    if images_per_second:
        return line + f", ETA {_duration((total - done) / images_per_second)}"
    return line


class ProgressReporter:
    """Prints :func:`progress_line` to ``stream`` every ``interval`` seconds while in a
    ``with`` block; the rate is measured from the first finished item on."""

    def __init__(self, stream: TextIO, interval: float = 10.0, tally: Tally = TALLY):
        self.stream, self.interval, self.tally = stream, interval, tally
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._first: Optional[tuple] = None  # (time, done) when items started to finish
        self._final_rate: Optional[float] = None  # once every item is done: its rate

    def __enter__(self):
        self.tally.clear()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            counts = self.tally.snapshot()
            done, now = items_done(counts), time.monotonic()
            if self._first is None and done:
                self._first = (now, done)
            rate = None
            if self._final_rate is not None:
                rate = self._final_rate  # the shards are being built: the rate stays put
            elif self._first is not None and now > self._first[0]:
                rate = (done - self._first[1]) / (now - self._first[0])
                if done >= counts.get("read", 0) > 0:
                    self._final_rate = rate
            print(progress_line(counts, rate), file=self.stream, flush=True)
