"""A ``catalog-index serve`` process for tests and benchmarks, on a free loopback port, and
a small HTTP client for it (the standard library's, one connection kept open per client).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class Client:
    """Requests over one kept-alive connection (reopened when the server closes it)."""

    def __init__(self, port: int, timeout: float = 30.0):
        self.port, self.timeout = port, timeout
        self._connection: Optional[http.client.HTTPConnection] = None

    def request(self, method: str, path: str, body=None, headers=None) -> Tuple[int, dict, bytes]:
        """-> (status, headers with lower-case names, body)."""
        for attempt in (0, 1):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(HOST, self.port,
                                                              timeout=self.timeout)
            try:
                self._connection.request(method, path, body=body, headers=headers or {})
                response = self._connection.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
                continue
            found = {name.lower(): value for name, value in response.getheaders()}
            if found.get("connection") == "close":
                self.close()
            return response.status, found, data
        raise AssertionError("unreachable")

    def get(self, path: str):
        return self.request("GET", path)

    def json(self, method: str, path: str, payload=None) -> Tuple[int, dict]:
        body = None if payload is None else json.dumps(payload).encode()
        status, _, data = self.request(method, path, body,
                                       {"content-type": "application/json"} if body else None)
        return status, json.loads(data)

    def upload(self, path: str, image: bytes, filename: str = "query.png",
               **fields) -> Tuple[int, dict, bytes]:
        body, content_type = multipart(image, filename, fields)
        return self.request("POST", path, body, {"content-type": content_type})

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def multipart(image: bytes, filename: str, fields: dict) -> Tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
             f"{value}\r\n".encode() for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                 f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                 .encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"


class ServerProcess:
    """``python -m pipelines.cli serve --index ROOT`` on a free loopback port, its output in
    ``log_path``; ready once /readyz says so."""

    def __init__(self, root: str, log_path: str, *extra: str, workers: int = 1,
                 ready_timeout: float = 90.0, env: Optional[dict] = None):
        self.port = free_port()
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "serve", "--index", root, "--port",
             str(self.port), "--workers", str(workers), *extra],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, **(env or {})})
        self.client = Client(self.port)
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}):\n"
                                   + self.log())
            try:
                if self.client.get("/readyz")[0] == 200:
                    break
            except OSError:
                self.client.close()
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server was not ready in time:\n" + self.log())
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        with open(self.log_path, "rb") as stream:
            return stream.read().decode(errors="replace")

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def stop(self) -> int:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
