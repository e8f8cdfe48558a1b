"""The HTTP JSON API and search page over the published version a :class:`Follower` keeps
in service: FastAPI on uvicorn. A thin layer: every answer comes from
:class:`search.PublishedIndex`; this module checks requests, runs queries within a time
limit, and says which version answered (``version`` in every JSON body, and the
``X-Index-Version`` header on every response).

Each request is pinned to the version in service when it starts (:meth:`Follower.pin`) and
released when its response is sent; a query runs on a bounded pool of threads and holds
the version too, so a query that outlives its request's time limit still finishes on the
version it started on before that version is closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import quote

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from catalog_index.storage import DEFAULT_MAX_IMAGE_BYTES
from catalog_index.text_index import analyze
from models.preprocessing import (DEFAULT_MAX_PIXELS, CorruptImageError, EmptyImageError,
                                  ImageError, ImageTooLargeError, UnsupportedImageError,
                                  open_image)
from search.index import DEFAULT_TEXT_WEIGHT, Hit, PublishedIndex
from serve.follow import DEFAULT_POLL_SECONDS, Follower, NotReady, Served
from serve.metrics import CONTENT_TYPE, Metrics
from serve.page import page_html
from serve.thumbnails import DEFAULT_CACHE_BYTES, ThumbnailCache

log = logging.getLogger("catalog_index.serve")

MAX_K = 1_000
MAX_TEXT_CHARS = 1_000
MAX_ID_CHARS = 1_024
MAX_VECTOR = 4_096
MAX_CHANGES_PAGE = 10_000
VERSION_HEADER = "x-index-version"
FORM_OVERHEAD_BYTES = 64 * 1024  # a multipart body's boundaries and other fields
# A refused body is read and dropped up to this much more, so that its sender reads the 413.
DRAIN_BYTES = 16 * 2**20


@dataclasses.dataclass(frozen=True)
class Settings:
    index: str
    poll_seconds: float = DEFAULT_POLL_SECONDS
    request_timeout: float = 10.0
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    cache_dir: Optional[str] = None
    query_threads: int = 8
    thumbnail_cache_bytes: int = DEFAULT_CACHE_BYTES

    @property
    def max_body_bytes(self) -> int:
        return self.max_image_bytes + FORM_OVERHEAD_BYTES


# --- the JSON the API speaks (for the OpenAPI schema; answers are built as plain dicts) ---

class Result(BaseModel):
    item_id: str
    score: float = Field(description="image queries: cosine similarity (1: the same image); "
                         "text: BM25 relevance (higher is better, within one query); both: "
                         "(1 - text_weight) x cosine + text_weight x the share of the words "
                         "the item's text holds")
    metadata: Dict[str, Any] = Field(description="the item's metadata row: title, category, "
                                     "caption, labels, colors, image_uri, ...")
    thumbnail: str = Field(description="path of the item's thumbnail (JPEG) on this server")


class SearchResponse(BaseModel):
    version: str = Field(description="the version that answered")
    query: Dict[str, Any]
    took_ms: float
    results: List[Result]


class ItemResponse(BaseModel):
    version: str
    item: Dict[str, Any]


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong, in one line")
    version: Optional[str] = Field(description="the version in service when it was refused")


class SearchRequest(BaseModel):
    """A query by text, by an indexed item (more like this), by a vector, or an item or
    vector with a text."""
    model_config = ConfigDict(extra="forbid")
    text: Optional[str] = Field(None, max_length=MAX_TEXT_CHARS)
    item_id: Optional[str] = Field(None, max_length=MAX_ID_CHARS)
    vector: Optional[List[float]] = Field(None, max_length=MAX_VECTOR, description=(
        "a model vector (the build's model) or one of the index's width"))
    k: int = Field(10, ge=1, le=MAX_K)
    text_weight: float = Field(DEFAULT_TEXT_WEIGHT, ge=0.0, le=1.0)


ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 413, 415, 422, 503)}


def http_error(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


# --- the middleware: pin a version, bound the body, count and time ------------------------

class ServeMiddleware:
    """Pure ASGI: pins each HTTP request to the version in service (``scope["state"]
    ["served"]``), names it in the ``X-Index-Version`` header, refuses a body over the
    limit (413) or one that takes longer than the time limit to arrive (408), and records
    the request's route, status and latency."""

    def __init__(self, app, follower: Follower, metrics: Metrics, settings: Settings):
        self.app, self.follower, self.metrics, self.settings = app, follower, metrics, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        state["started"] = started
        try:
            served = self.follower.pin()
        except NotReady:
            served = None
        state["served"] = served
        version = served.version_id if served else None
        if served:
            self.metrics.in_flight.labels(version).inc()
        outcome = {"status": 500, "started": False, "refused": None}

        async def send_wrapper(message):
            if outcome["refused"] is not None:
                return  # the body was refused: the app's own answer is dropped
            if message["type"] == "http.response.start":
                outcome["status"], outcome["started"] = message["status"], True
                if version:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (VERSION_HEADER.encode(), version.encode())]}
            await send(message)

        limit, received = self.settings.max_body_bytes, 0
        declared = _content_length(scope)
        deadline = started + self.settings.request_timeout
        if declared is not None and declared > limit:
            outcome["refused"] = (413, f"request body of {declared:,} bytes is over the "
                                  f"limit of {limit:,}")
            if declared <= limit + DRAIN_BYTES and not _header(scope, b"expect"):
                await _drain(receive, DRAIN_BYTES + limit, deadline)

        async def receive_wrapper():
            nonlocal received
            if outcome["refused"] is not None:
                return {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(),
                                                 max(0.0, deadline - time.perf_counter()))
            except asyncio.TimeoutError:
                outcome["refused"] = (408, "the request body did not arrive within "
                                      f"{self.settings.request_timeout:g} s")
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    outcome["refused"] = (413, f"request body over the limit of {limit:,} "
                                          "bytes")
                    if message.get("more_body"):
                        await _drain(receive, DRAIN_BYTES, deadline)
                    return {"type": "http.disconnect"}
            return message

        try:
            if outcome["refused"] is None:
                try:
                    await self.app(scope, receive_wrapper, send_wrapper)
                except Exception:
                    if outcome["refused"] is None:
                        raise
            if outcome["refused"] is not None and not outcome["started"]:
                status, detail = outcome["refused"]
                outcome["refused"] = None
                await JSONResponse({"detail": detail, "version": version}, status,
                                   headers={"connection": "close"})(scope, receive, send_wrapper)
        finally:
            if served:
                self.metrics.in_flight.labels(version).dec()
                served.release()
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(label, scope["method"], str(outcome["status"])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)


def _header(scope, wanted: bytes) -> Optional[bytes]:
    for name, value in scope.get("headers", ()):
        if name == wanted:
            return value
    return None


def _content_length(scope) -> Optional[int]:
    try:
        return int(_header(scope, b"content-length"))
    except (TypeError, ValueError):
        return None


async def _drain(receive, budget: int, deadline: float) -> None:
    """Read and drop what is left of a refused body, up to ``budget`` bytes and the time
    limit, so that the client, still sending, can read the 413 before the connection
    closes (closing on unread bytes resets the connection, and the answer is lost)."""
    drained = 0
    while drained <= budget:
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - time.perf_counter()))
        except asyncio.TimeoutError:
            return
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body"):
            return


# --- the app ------------------------------------------------------------------------------

def create_app(settings: Settings, follower: Optional[Follower] = None) -> FastAPI:
    """The app of one worker process. Its follower starts with the app (lifespan) and opens
    LATEST's version in the background: /readyz says when it is in service."""
    metrics = Metrics()
    if follower is None:
        follower = Follower(settings.index, settings.poll_seconds, settings.cache_dir,
                            on_swap=metrics.swapped, on_refusal=metrics.refusal,
                            on_refusal_cleared=metrics.refusal_cleared)
    queries = ThreadPoolExecutor(settings.query_threads, thread_name_prefix="query")
    thumbnails = ThumbnailCache(settings.thumbnail_cache_bytes, settings.max_image_bytes,
                                settings.max_pixels)

    async def lifespan(app):
        import signal

        follower.start()
        loop = asyncio.get_running_loop()
        try:  # SIGHUP: look at LATEST now (the main thread of a worker only)
            loop.add_signal_handler(signal.SIGHUP, follower.reload_now)
        except (RuntimeError, ValueError, NotImplementedError):
            pass
        yield
        follower.stop()
        queries.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="catalog-index serve",
        description="Search a published catalog image index: an item's metadata, more like "
                    "this, search by text, by an uploaded image, or by image and text. It "
                    "follows LATEST; every answer names the version that gave it.",
        version="1", lifespan=lifespan)
    app.state.follower, app.state.metrics, app.state.settings = follower, metrics, settings
    app.add_middleware(ServeMiddleware, follower=follower, metrics=metrics, settings=settings)

    # --- errors: one-line JSON, never a traceback -------------------------------------
    def error(request: Request, status: int, detail: str, headers=None) -> JSONResponse:
        served = request.scope.get("state", {}).get("served")
        return JSONResponse({"detail": detail, "version": served.version_id if served else None},
                            status, headers=headers)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException):
        return error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError):
        problems = exc.errors()
        if any(problem.get("type") == "json_invalid" for problem in problems):
            return error(request, 400, "malformed JSON body")
        return error(request, 422, "; ".join(_problem(problem) for problem in problems[:5]))

    @app.exception_handler(NotReady)
    async def on_not_ready(request: Request, exc: NotReady):
        return error(request, 503, str(exc), {"retry-after": "5"})

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return error(request, 500, "internal error (the server's log has the details)")

    # --- running a query ----------------------------------------------------------------
    async def run(request: Request, work: Callable[[PublishedIndex], Any]):
        """``work(index)`` on the query pool, on the request's version, within the time
        limit -> (its result, the version, milliseconds)."""
        served: Optional[Served] = request.scope["state"].get("served")
        if served is None:
            raise NotReady(follower.not_ready_reason())
        served.hold()

        def job():
            try:
                return work(served.index)
            finally:
                served.release()

        future = queries.submit(job)
        future.add_done_callback(lambda done: served.release() if done.cancelled() else None)
        started = request.scope["state"]["started"]
        remaining = settings.request_timeout - (time.perf_counter() - started)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), max(0.001, remaining))
        except asyncio.TimeoutError:
            metrics.timeouts.inc()
            raise http_error(503, f"the query took longer than the "
                             f"{settings.request_timeout:g} s limit") from None
        except KeyError as exc:
            raise http_error(404, str(exc.args[0]) if exc.args else "not found") from None
        except ImageError as exc:
            raise image_error(exc) from None
        return result, served.version_id, (time.perf_counter() - started) * 1000

    def answer(version: str, query: dict, took_ms: float, hits: List[Hit]) -> JSONResponse:
        return JSONResponse({"version": version, "query": query, "took_ms": round(took_ms, 3),
                             "results": [result(hit) for hit in hits]})

    def check_text(text: Optional[str]) -> None:
        if text is not None and not analyze(text):
            raise http_error(422, "text has no words to search for")

    # --- routes ----------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(page_html())

    @app.get("/healthz", summary="The process is alive")
    async def healthz():
        current = follower.current
        return {"status": "alive", "version": current.version_id if current else None}

    @app.get("/readyz", summary="A verified version is in service (503 until then)",
             responses={503: {"description": "no version in service"}})
    async def readyz():
        status = follower.status()
        return JSONResponse(status, 200 if status["ready"] else 503)

    @app.get("/metrics", summary="Prometheus metrics (text format)",
             response_class=Response)
    async def prometheus():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/v1/version", summary="The version in service", responses=ERRORS)
    async def version(request: Request):
        served = _served(request)
        manifest = served.index.manifest
        return {"version": served.version_id, "created_at": manifest.get("created_at"),
                "items": len(served.index), "shards": len(manifest["index"]["shards"]),
                "dimension": served.index.dimension,
                "model": manifest["model"]["name"],
                "text_index": bool(manifest.get("text_index")),
                "image_queries": bool(manifest.get("query_model")),
                "counts": manifest.get("counts"),
                "loaded_at": served.loaded_at, "swap_seconds": round(served.swap_seconds, 3)}

    @app.get("/v1/item", summary="An item's metadata", response_model=ItemResponse,
             responses=ERRORS)
    async def item(request: Request, item_id: str = Query(..., min_length=1,
                                                          max_length=MAX_ID_CHARS)):
        row, version, _ = await run(request, lambda index: index.item(item_id))
        return JSONResponse({"version": version, "item": row})

    @app.get("/v1/similar", summary="More like this: the items nearest an indexed item",
             response_model=SearchResponse, responses=ERRORS)
    async def similar(request: Request,
                      item_id: str = Query(..., min_length=1, max_length=MAX_ID_CHARS),
                      k: int = Query(10, ge=1, le=MAX_K),
                      text: Optional[str] = Query(None, max_length=MAX_TEXT_CHARS,
                                                  description="fused with the item's image"),
                      text_weight: float = Query(DEFAULT_TEXT_WEIGHT, ge=0.0, le=1.0)):
        check_text(text)

        def work(index: PublishedIndex):
            if text:
                return index.query(vector=index.vector(item_id), text=text, k=k,
                                   text_weight=text_weight, exclude=[item_id])
            return index.query_item(item_id, k)

        hits, version, took = await run(request, work)
        return answer(version, {"type": "item+text" if text else "item", "item_id": item_id,
                                "text": text, "k": k, "text_weight": text_weight if text
                                else None}, took, hits)

    @app.get("/v1/search", summary="Search by text (BM25 over titles, categories, captions)",
             response_model=SearchResponse, responses=ERRORS)
    async def search_text(request: Request,
                          text: str = Query(..., min_length=1, max_length=MAX_TEXT_CHARS),
                          k: int = Query(10, ge=1, le=MAX_K)):
        check_text(text)
        hits, version, took = await run(request, lambda index: index.query_text(text, k))
        return answer(version, {"type": "text", "text": text, "k": k}, took, hits)

    @app.post("/v1/search", summary="Search by text, item, vector, or item/vector and text "
              "(JSON body)", response_model=SearchResponse, responses=ERRORS)
    async def search_json(request: Request, body: SearchRequest):
        if body.item_id is None and body.vector is None and body.text is None:
            raise http_error(422, "one of text, item_id or vector is required")
        if body.item_id is not None and body.vector is not None:
            raise http_error(422, "item_id and vector cannot both be given")
        if body.item_id is not None and not body.item_id:
            raise http_error(422, "item_id must not be empty")
        if body.vector is not None and not all(math.isfinite(x) for x in body.vector):
            raise http_error(422, "vector must hold finite numbers")
        check_text(body.text)

        def work(index: PublishedIndex):
            if body.vector is not None:
                widths = {index.dimension} | ({index.projection.input_dim}
                                              if index.projection is not None else set())
                if len(body.vector) not in widths:
                    raise ValueError(f"vector has {len(body.vector)} numbers, this version "
                                     f"takes {' or '.join(map(str, sorted(widths)))}")
                return index.query(vector=body.vector, text=body.text, k=body.k,
                                   text_weight=body.text_weight)
            if body.item_id is not None:
                if body.text:
                    return index.query(vector=index.vector(body.item_id), text=body.text,
                                       k=body.k, text_weight=body.text_weight,
                                       exclude=[body.item_id])
                return index.query_item(body.item_id, body.k)
            return index.query_text(body.text, body.k)

        try:
            hits, version, took = await run(request, work)
        except ValueError as exc:
            raise http_error(422, str(exc)) from None
        kind = "vector" if body.vector is not None else "item" if body.item_id else None
        kind = "+".join(filter(None, [kind, "text" if body.text else None]))
        return answer(version, {"type": kind, "item_id": body.item_id, "text": body.text,
                                "k": body.k, "text_weight": body.text_weight}, took, hits)

    @app.post("/v1/search/image", summary="Search by an uploaded image, or an image and a "
              "text (multipart form)", response_model=SearchResponse, responses=ERRORS)
    async def search_image(request: Request,
                           image: UploadFile = File(..., description="an image file"),
                           text: Optional[str] = Form(None, max_length=MAX_TEXT_CHARS),
                           k: int = Form(10, ge=1, le=MAX_K),
                           text_weight: float = Form(DEFAULT_TEXT_WEIGHT, ge=0.0, le=1.0)):
        text = text or None
        check_text(text)
        data = await image.read(settings.max_image_bytes + 1)
        if len(data) > settings.max_image_bytes:
            raise http_error(413, f"image over the limit of {settings.max_image_bytes:,} bytes")
        try:
            open_image(data, settings.max_pixels)  # format and pixel limit, before decoding
        except ImageError as exc:
            raise image_error(exc) from None
        if not _served(request).index.manifest.get("query_model"):
            raise http_error(422, "this version has no query model (model/model.tflite): "
                             "image queries need the build's model")
        hits, version, took = await run(request, lambda index: index.query(
            image=data, text=text, k=k, text_weight=text_weight))
        return answer(version, {"type": "image+text" if text else "image", "text": text,
                                "k": k, "text_weight": text_weight if text else None,
                                "image_bytes": len(data)}, took, hits)

    @app.get("/v1/thumbnail", summary="A thumbnail of an item's image (JPEG)",
             response_class=Response, responses=ERRORS)
    async def thumbnail(request: Request,
                        item_id: str = Query(..., min_length=1, max_length=MAX_ID_CHARS),
                        sha256: Optional[str] = Query(None, max_length=64, description=(
                            "the image's sha256 as the metadata has it: makes the URL "
                            "change when the image does, so browsers may keep it"))):
        def work(index: PublishedIndex):
            row = index.item(item_id)
            key = row.get("sha256") or row.get("image_uri")
            return thumbnails.get(key, row["image_uri"]), row.get("sha256")

        found, _, _ = await run(request, work)
        data, digest = found
        if data is None:
            raise http_error(404, f"item {item_id!r}: its image could not be read")
        headers = {"cache-control": "public, max-age=31536000, immutable"
                   if sha256 and sha256 == digest else "public, max-age=300"}
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.get("/v1/changes", summary="What changed since the version published before",
             responses=ERRORS)
    async def changes(request: Request, change: Optional[str] = Query(
                          None, max_length=32, description="added, removed, image_changed, "
                          "metadata_changed or vector_changed"),
                      offset: int = Query(0, ge=0), limit: int = Query(1000, ge=1,
                                                                      le=MAX_CHANGES_PAGE)):
        def work(index: PublishedIndex):
            served = request.scope["state"]["served"]
            table = served.cached.get("changes")
            if table is None:
                table = served.cached["changes"] = index.changes()
            if change is not None:
                import pyarrow.compute as pc

                table = table.filter(pc.equal(table.column("change"), change))
            return table.num_rows, table.slice(offset, limit).to_pylist()

        try:
            (total, rows), version, _ = await run(request, work)
        except ValueError as exc:
            raise http_error(404, str(exc)) from None
        return {"version": version, "total": total, "offset": offset, "changes": rows}

    return app


def preload() -> None:
    """Import what a worker runs before it is forked, so that workers share those pages
    (serve/workers.py): the reader's libraries, the query model's runtime, the HTTP
    protocol and event loop."""
    import importlib

    import annoy  # noqa: F401
    import bm25s  # noqa: F401
    import pyarrow.compute  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    from models.loader import tflite_interpreter_class

    tflite_interpreter_class()
    for name in ("uvloop", "httptools", "uvicorn.protocols.http.httptools_impl",
                 "uvicorn.protocols.http.h11_impl", "uvicorn.lifespan.on",
                 "multipart", "PIL.PngImagePlugin", "PIL.JpegImagePlugin"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _served(request: Request) -> Served:
    served = request.scope["state"].get("served")
    if served is None:
        raise NotReady("no version in service yet")
    return served


def result(hit: Hit) -> dict:
    metadata = hit.metadata
    thumbnail = "/v1/thumbnail?item_id=" + quote(hit.item_id, safe="")
    if metadata.get("sha256"):
        thumbnail += "&sha256=" + metadata["sha256"]
    return {"item_id": hit.item_id, "score": round(float(hit.score), 6), "metadata": metadata,
            "thumbnail": thumbnail}


def image_error(exc: ImageError) -> HTTPException:
    if isinstance(exc, ImageTooLargeError):
        return http_error(413, f"image: {exc}")
    if isinstance(exc, UnsupportedImageError):
        return http_error(415, f"image: {exc}")
    if isinstance(exc, (EmptyImageError, CorruptImageError)):
        return http_error(400, f"image: {exc}")
    return http_error(400, f"image: {exc}")


def _problem(problem: dict) -> str:
    """A validation problem in a few words, without the value sent."""
    where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body") or "body"
    return f"{where}: {problem.get('msg', 'invalid')}"
