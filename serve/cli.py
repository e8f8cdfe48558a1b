"""``catalog-index serve``: the HTTP JSON API and search page over a published index,
following LATEST (:data:`DESCRIPTION` is its ``--help``)."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import sys
import tempfile
from typing import List, Optional

from catalog_index import storage
from catalog_index.cli import OneLineParser, UsageError, positive_int, positive_number
from catalog_index.storage import DEFAULT_MAX_IMAGE_BYTES
from models.preprocessing import DEFAULT_MAX_PIXELS

DESCRIPTION = """\
Serve a published index over HTTP: a JSON API (its schema at /openapi.json, docs at
/docs), a search page at /, /healthz, /readyz and Prometheus /metrics.

  catalog-index serve --index ROOT [--host 127.0.0.1] [--port 8080] [--workers N]

It follows LATEST: every --poll-seconds (and at once on SIGHUP) it reads ROOT/LATEST, and
opens, verifies and warms up a newly named version in the background before swapping it
in; requests already running finish on the version they started with. A version that
fails verification is refused and the one in service stays (/readyz says why).
It listens on loopback unless --host says otherwise.
"""


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = OneLineParser(prog="catalog-index serve", description=DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, metavar="ROOT",
                        help="output root of the build (local or gs://)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes (default 1); they share the index's pages")
    parser.add_argument("--poll-seconds", type=positive_number, default=5.0, metavar="S",
                        help="how often LATEST is read (default 5)")
    parser.add_argument("--request-timeout", type=positive_number, default=10.0, metavar="S",
                        help="time limit of a request, body and query (default 10)")
    parser.add_argument("--max-image-bytes", type=positive_int,
                        default=DEFAULT_MAX_IMAGE_BYTES, metavar="N",
                        help=f"largest image upload (default {DEFAULT_MAX_IMAGE_BYTES:,}, as "
                             "the build)")
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        metavar="N", help=f"largest image in pixels (default "
                                          f"{DEFAULT_MAX_PIXELS:,}, as the build)")
    parser.add_argument("--query-threads", type=positive_int, default=8, metavar="N",
                        help="queries a worker runs at once (default 8)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="the reader's cache (default: the reader's own)")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    if not 1 <= args.workers <= 64:
        parser.error("--workers must be between 1 and 64")
    if not storage.is_gcs(args.index) and not os.path.isdir(args.index):
        parser.error(f"--index {args.index}: no such folder")
    return args


def run(argv: Optional[List[str]] = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(f"catalog-index serve: error: {error}", file=sys.stderr)
        return 2
    # Every worker's metrics in files of one fresh folder, before prometheus_client loads.
    metrics_dir = tempfile.mkdtemp(prefix="catalog-index-serve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return serve(args)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from serve.app import Settings, create_app, preload

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = Settings(index=args.index, poll_seconds=args.poll_seconds,
                        request_timeout=args.request_timeout,
                        max_image_bytes=args.max_image_bytes, max_pixels=args.max_pixels,
                        cache_dir=args.cache_dir, query_threads=args.query_threads)
    config = uvicorn.Config(functools.partial(create_app, settings), factory=True,
                            host=args.host, port=args.port, access_log=args.access_log,
                            log_level="info", timeout_graceful_shutdown=30,
                            server_header=False)
    if args.workers == 1:
        server = uvicorn.Server(config)
        server.run()
        return 0 if server.started else 1
    from serve.workers import Workers

    preload()
    return Workers(config, args.workers).run()


def main() -> None:
    sys.exit(run())
