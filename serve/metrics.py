"""The server's Prometheus metrics (``/metrics``, text format).

With several worker processes each process writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` (the command makes a fresh one per run) and ``/metrics``
answers for all of them, whichever worker is asked: counters and histograms summed,
gauges per process (a ``pid`` label). Without that variable (one process, e.g. a test
that builds the app itself) the metrics live in a registry of their own.
"""

from __future__ import annotations

import os
from typing import Optional

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)

PREFIX = "catalog_index_serve"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
SWAP_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self):
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        # Registered nowhere in multiprocess mode (the collector reads the files), else in
        # a registry of this app's own.
        self._registry = None if self.multiprocess_dir else CollectorRegistry()
        registry = self._registry
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests answered, by route "
                                "(the path template), method and status code",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram(f"{PREFIX}_request_duration_seconds", "Time from a "
                                 "request's start to its response, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.version = Gauge(f"{PREFIX}_version_info", "1 for the version this process "
                             "serves, 0 for those it served before", ["version"],
                             multiprocess_mode="liveall", registry=registry)
        self.ready = Gauge(f"{PREFIX}_ready", "1 when this process has a verified version "
                           "in service", multiprocess_mode="liveall", registry=registry)
        self.items = Gauge(f"{PREFIX}_items", "Items in the version this process serves",
                           multiprocess_mode="liveall", registry=registry)
        self.in_flight = Gauge(f"{PREFIX}_in_flight_requests", "Requests running, by the "
                               "version they run on", ["version"],
                               multiprocess_mode="liveall", registry=registry)
        self.swaps = Counter(f"{PREFIX}_swaps", "Versions swapped in after the first "
                             "(a new publication or a rollback)", registry=registry)
        self.failed_swaps = Counter(f"{PREFIX}_failed_swaps", "Versions LATEST named that "
                                    "could not be put into service (the old one stayed)",
                                    registry=registry)
        self.swap_seconds = Histogram(f"{PREFIX}_swap_duration_seconds", "Time to download, "
                                      "verify, open and warm up a version before its swap",
                                      buckets=SWAP_BUCKETS, registry=registry)
        self.refused = Gauge(f"{PREFIX}_refused_version_info", "1 for the version LATEST "
                             "names that this process refused, with the reason (one line); "
                             "0 once it no longer applies", ["version", "reason"],
                             multiprocess_mode="liveall", registry=registry)
        self.timeouts = Counter(f"{PREFIX}_request_timeouts", "Queries that ran past the "
                                "time limit (answered 503)", registry=registry)

    def exposition(self) -> bytes:
        if self._registry is not None:
            return generate_latest(self._registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry)

    def swapped(self, old: Optional[str], new) -> None:
        if old is not None:
            self.version.labels(old).set(0)
            self.swaps.inc()
        self.version.labels(new.version_id).set(1)
        self.swap_seconds.observe(new.swap_seconds)
        self.ready.set(1)
        self.items.set(len(new.index))

    def refusal(self, refusal) -> None:
        self.failed_swaps.inc()
        self.refused.labels(refusal.version_id or "", refusal.reason[:200]).set(1)

    def refusal_cleared(self, refusal) -> None:
        self.refused.labels(refusal.version_id or "", refusal.reason[:200]).set(0)


def mark_process_dead(pid: int) -> None:
    """Drop a worker's per-process gauges once it has exited."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
