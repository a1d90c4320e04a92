"""The FastAPI application factory: ``create_app(settings)``; ``imsearch serve`` runs it with uvicorn.

The lifespan opens the collection once (writable: this process is the one writer of its
data directory), the job runner and the thumbnail cache, hands them to routes through the
lifespan state (see :mod:`api.deps`), and closes them on shutdown (stopping a running job,
saving the index). Nothing heavy is created at import time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from api.auth import API_KEY_HEADER
from api.deps import Services
from api.errors import install_error_handlers
from api.middleware import BodyLimitMiddleware, SecurityHeadersMiddleware
from api.openapi import install_docs, install_openapi
from api.ratelimit import RateLimiter
from api.routers import browse, collection, images, jobs, search, web
from api.settings import Settings
from api.views import API_PREFIX
from retrieval import __version__

if TYPE_CHECKING:
    from retrieval.files import FilePolicy
    from retrieval.search import SearchEngine

logger = logging.getLogger(__name__)

DESCRIPTION = """Query-by-example image search over an indexed photo collection.

Search with an uploaded photo or an indexed image (optionally a box on it), filter by
detected labels, add and delete images, and run bulk index jobs. Errors are RFC 9457
problem documents (`application/problem+json`). Writes need an API key in the
`X-API-Key` header. Ids are 64-bit integers, given as decimal strings in responses.
"""


def open_services(settings: Settings) -> Services:
    """Open the collection and everything built on it (blocking: run in a thread)."""
    from api.compute import ForegroundGate, ModelRunner, limit_malloc_arenas, thread_split
    from api.ingest import Ingestor
    from api.jobs import JobRunner
    from api.thumbnails import ThumbnailCache
    from retrieval.search import SearchEngine

    limit_malloc_arenas(settings.malloc_arena_max, settings.malloc_mmap_threshold_mib)
    gate = ForegroundGate(settings.job_yield_max_ms / 1000, settings.job_min_run_ms / 1000)
    model = ModelRunner(thread_split(settings.job_threads)[0], gate)
    try:  # the model is built on its own thread too: no other thread may start an OpenMP team (see api.compute)
        engine = model.run(
            SearchEngine.open,
            settings.data_dir,
            db_url=settings.db,
            writable=not settings.read_only,
            device=settings.device,
            engine=settings.model_engine,
        )
    except BaseException:
        model.close()
        raise
    engine.file_policy = file_policy(settings)
    try:
        runner = JobRunner(engine, settings, gate)
        if not settings.read_only:
            runner.recover()
        thumbnails = ThumbnailCache(
            settings.thumbnails_dir, quality=settings.thumbnail_quality, max_pixels=settings.max_pixels
        )
        services = Services(
            engine=engine,
            model=model,
            ingest=Ingestor(engine, settings, model),
            jobs=runner,
            thumbnails=thumbnails,
        )
        if settings.warmup:
            model.run(warm_up, engine)
    except BaseException:
        model.close()
        engine.close()
        raise
    logger.info(
        "serving %s (%d images, %s)",
        engine.collection.root,
        engine.collection.count("image"),
        "read-only" if settings.read_only else "writable",
    )
    return services


def file_policy(settings: Settings) -> FilePolicy:
    """Where this server reads indexed originals: its allowed roots and uploads (see :mod:`retrieval.files`).

    Without allowed roots, files the command line indexed are served wherever they are,
    but never through a symbolic link swapped in for one, and only with their indexed content.
    """
    from retrieval.files import FilePolicy

    roots = (*settings.allowed_roots, settings.uploads_dir) if settings.allowed_roots else None
    return FilePolicy(roots=roots)


def warm_up(engine: SearchEngine) -> None:
    """One extraction at start-up (lazy kernel set-up, thread pools), so the first query does not pay for it."""
    t0 = time.perf_counter()
    pixels = np.zeros((384, 512, 3), dtype=np.uint8)
    pixels[:, :, 0] = (np.arange(512) // 2).astype(np.uint8)[None, :]
    engine.extractor.extract_one(pixels)
    logger.info("model warmed up in %.1f s", time.perf_counter() - t0)


def close_services(services: Services) -> None:
    try:
        services.jobs.shutdown()
        services.model.close()
    finally:
        services.engine.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API and web page for the collection the settings name (environment ``IMSEARCH_*`` by default)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        services = await run_in_threadpool(open_services, settings)
        try:
            yield {"services": services}
        finally:
            await run_in_threadpool(close_services, services)

    app = FastAPI(  # /docs: served from local assets by install_docs, under a CSP
        title="imsearch", version=__version__, description=DESCRIPTION, lifespan=lifespan, redoc_url=None, docs_url=None
    )
    app.state.settings = settings
    app.state.limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[API_KEY_HEADER, "Content-Type"],
            expose_headers=["Retry-After", "Location"],
            max_age=600,
        )
    app.add_middleware(SecurityHeadersMiddleware)
    app.include_router(collection.health_router, prefix=API_PREFIX)
    app.include_router(collection.router, prefix=API_PREFIX)
    app.include_router(search.router, prefix=API_PREFIX)
    app.include_router(browse.router, prefix=API_PREFIX)
    app.include_router(images.router, prefix=API_PREFIX)
    app.include_router(jobs.router, prefix=API_PREFIX)
    app.include_router(web.router)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    install_openapi(app)
    install_docs(app)
    return app
