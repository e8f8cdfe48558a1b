"""Several uvicorn workers over one listening socket, forked from a parent that has
imported everything they run (pre-fork, as gunicorn's ``--preload`` does).

uvicorn's own ``--workers`` spawns fresh interpreters: each imports NumPy, Arrow, FastAPI,
LiteRT, ... on its own, 70-100 MB of private memory apiece. Forked workers share the
parent's pages of all that (``gc.freeze()`` keeps the collector from touching, and so
copying, them), and the versions' files are memory-mapped, so a second worker costs
little more than its own heap (docs/benchmarks.md, "catalog-index serve").

The parent serves nothing: it restarts a worker that dies, passes SIGHUP on to every
worker (each then looks at LATEST at once, instead of uvicorn's restart of every worker),
and on SIGINT or SIGTERM stops them all (each finishes the requests it has running).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from typing import Dict

import uvicorn

from serve.metrics import mark_process_dead

log = logging.getLogger("catalog_index.serve")

# A worker that dies this soon after it started, this many times running, is not restarted
# again (the app cannot start: say so and stop).
QUICK_DEATH_SECONDS, QUICK_DEATHS = 10.0, 5
STOP_SECONDS = 30.0


class Workers:
    def __init__(self, config: uvicorn.Config, count: int):
        self.config, self.count = config, count
        self.children: Dict[int, float] = {}  # pid -> when it started
        self._signals: list = []
        self._quick_deaths = 0

    def run(self) -> int:
        socket = self.config.bind_socket()
        gc.collect()
        gc.freeze()  # the imported modules' objects are never scanned: their pages stay shared
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda number, frame: self._signals.append(number))
        log.info("parent process %d starting %d workers", os.getpid(), self.count)
        for _ in range(self.count):
            self._start(socket)
        status = 0
        while True:
            stop = False
            while self._signals:
                number = self._signals.pop(0)
                if number == signal.SIGHUP:
                    log.info("SIGHUP: every worker looks at LATEST now")
                    self._signal_all(signal.SIGHUP)
                else:
                    stop = True
            if stop:
                break
            if not self._reap(socket):
                status = 1
                break
            time.sleep(0.2)
        self._stop()
        socket.close()
        return status

    def _start(self, socket) -> None:
        pid = os.fork()
        if pid:
            self.children[pid] = time.monotonic()
            return
        code = 1
        try:  # the worker: uvicorn's signal handling, not the parent's
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            uvicorn.Server(self.config).run(sockets=[socket])
            code = 0
        except BaseException:
            log.exception("worker %d failed", os.getpid())
        finally:
            os._exit(code)

    def _reap(self, socket) -> bool:
        """Restart the workers that died; False when they keep dying at start."""
        while self.children:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            started = self.children.pop(pid, None)
            if started is None:
                continue
            mark_process_dead(pid)
            lived = time.monotonic() - started
            self._quick_deaths = self._quick_deaths + 1 if lived < QUICK_DEATH_SECONDS else 0
            if self._quick_deaths >= QUICK_DEATHS:
                log.error("workers keep dying as they start (%d times): stopping",
                          self._quick_deaths)
                return False
            log.warning("worker %d died after %.1f s: starting another", pid, lived)
            self._start(socket)
        return True

    def _signal_all(self, number: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass

    def _stop(self) -> None:
        """SIGTERM to every worker (uvicorn finishes their requests), SIGKILL after
        STOP_SECONDS."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        while self.children and time.monotonic() < deadline:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid:
                self.children.pop(pid, None)
                mark_process_dead(pid)
            else:
                time.sleep(0.05)
        self._signal_all(signal.SIGKILL)
        for pid in list(self.children):
            os.waitpid(pid, 0)
            mark_process_dead(pid)
        self.children.clear()
