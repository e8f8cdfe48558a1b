"""A real dask.distributed cluster on loopback for the tests: a scheduler process and one
``dask worker`` process with two worker processes, started as a user would start them, and
stopped (every process of them) when done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

DASK = os.path.join(os.path.dirname(sys.executable), "dask")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DaskCluster:
    def __init__(self, workers: int = 2, timeout: float = 90.0):
        self.folder = tempfile.mkdtemp(prefix="dask-cluster-")
        scheduler_file = os.path.join(self.folder, "scheduler.json")
        log = open(os.path.join(self.folder, "cluster.log"), "ab")
        # Workers unpickle functions of the tests' modules too: the repository is on their path.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
        common = {"stdout": log, "stderr": subprocess.STDOUT, "start_new_session": True,
                  "env": env}
        self.processes = [subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", scheduler_file], **common)]
        deadline = time.monotonic() + timeout
        while not os.path.exists(scheduler_file):
            self._check(deadline)
        with open(scheduler_file) as stream:
            self.address = json.load(stream)["address"]
        self.processes.append(subprocess.Popen(
            [DASK, "worker", self.address, "--nworkers", str(workers), "--nthreads", "1",
             "--no-dashboard", "--host", "127.0.0.1", "--memory-limit", "0",
             "--local-directory", self.folder], **common))
        from distributed import Client

        with Client(self.address, timeout=timeout) as client:
            client.wait_for_workers(workers, timeout=timeout)
        self.workers = workers

    def _check(self, deadline: float) -> None:
        if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
            self.stop()
            raise RuntimeError(f"dask cluster did not start; see {self.folder}/cluster.log")
        time.sleep(0.1)

    def stop(self) -> None:
        """Stop every process the cluster started (each runs in its own process group)."""
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
