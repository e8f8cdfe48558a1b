"""A fault-injecting HTTP proxy on loopback, in front of the GCS emulator: storage that
misbehaves as real object storage sometimes does. Point ``STORAGE_EMULATOR_HOST`` at
``proxy.url``.

Each rule applies to the requests it matches (HTTP methods, and bytes that must occur in
the path or the body), at a rate drawn from a seeded generator:

- ``delay``: hold the request ``seconds``, then forward it;
- ``slow``: forward the request at once, then hold its answer ``seconds`` (it has happened,
  and the client does not know yet);
- ``503`` / ``429``: answer that status without forwarding;
- ``reset``: drop the connection without an answer;
- ``cut``: forward, then send the upstream's headers and only half of its body.
"""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import json
import random
import socket
import struct
import threading
import time
import urllib.parse
from typing import Optional, Sequence

READS = ("GET", "HEAD")
WRITES = ("POST", "PUT", "PATCH", "DELETE")
FAULTS = ("delay", "slow", "503", "429", "reset", "cut")


@dataclasses.dataclass
class Rule:
    fault: str
    rate: float
    methods: Sequence[str] = READS + WRITES
    match: Optional[bytes] = None  # must occur in the path or the body
    seconds: float = 0.0  # for delay and slow
    times: Optional[int] = None  # injected at most this many times

    def applies(self, method: str, path: str, body: bytes) -> bool:
        return method in self.methods and (
            self.match is None or self.match in path.encode() or self.match in body)


class FaultProxy(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, target: str, rules: Sequence[Rule] = (), seed: int = 0):
        assert all(rule.fault in FAULTS for rule in rules)
        self.target = urllib.parse.urlparse(target)
        self.rules = list(rules)
        self._random, self._lock = random.Random(seed), threading.Lock()
        self.injected = {fault: 0 for fault in FAULTS}
        self._count = {id(rule): 0 for rule in self.rules}
        self.requests = 0
        self.started = time.monotonic()
        self.log = []  # (seconds since start, method, path, faults) per request
        self.answered = []  # (method, path) per request answered or dropped, in order
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def draw(self, method: str, path: str, body: bytes) -> list:
        """The faults to inject into this request (at most one that answers for upstream)."""
        with self._lock:
            self.requests += 1
            chosen = [rule for rule in self.rules if rule.applies(method, path, body)
                      and self._random.random() < rule.rate
                      and (rule.times is None or self._count[id(rule)] < rule.times)]
            for rule in chosen:
                self.injected[rule.fault] += 1
                self._count[id(rule)] += 1
            self.log.append((time.monotonic() - self.started, method, path,
                             [rule.fault for rule in chosen]))
            return chosen

    def handle_error(self, request, client_address):
        pass  # a client that drops a connection it gave up on, after an injected fault

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        self.rfile.readline()
        return b"".join(chunks)

    def _answering(self):
        self.server.answered.append((self.command, self.path))

    def _relay(self):
        body = self._body()
        faults = self.server.draw(self.command, self.path, body)
        for rule in faults:
            if rule.fault == "delay":
                time.sleep(rule.seconds)
        answering = next((rule.fault for rule in faults
                          if rule.fault not in ("delay", "slow")), None)
        if answering == "reset":
            self._answering()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))  # RST, not FIN
            self.close_connection = True
            return
        if answering in ("503", "429"):
            self._answering()
            message = json.dumps({"error": {"code": int(answering),
                                            "message": "injected fault"}}).encode()
            self.send_response(int(answering))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            self.wfile.write(message)
            return
        upstream = http.client.HTTPConnection(self.server.target.hostname,
                                              self.server.target.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("host", "transfer-encoding")}
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
        finally:
            upstream.close()
        for rule in faults:
            if rule.fault == "slow":
                time.sleep(rule.seconds)
        self._answering()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if answering == "cut" and self.command != "HEAD":
            self.wfile.write(payload[:len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

    def log_message(self, *args):
        pass
