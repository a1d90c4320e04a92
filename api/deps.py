"""Dependencies: the heavy handles opened in the lifespan, handed to routes with ``Depends``.

Routes declare what they use, e.g. ``engine: EngineDep``; the handles live in the
lifespan state (one :class:`Services` per running app), never in module globals.
Access rules (``ReadAccess``, ``WriteAccess``) bundle the API-key check and the rate limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from api.auth import require_read, require_write, settings_of
from api.errors import ApiError
from api.ratelimit import rate_limit
from api.settings import Settings

if TYPE_CHECKING:
    from api.compute import ModelRunner
    from api.ingest import Ingestor
    from api.jobs import JobRunner
    from api.thumbnails import ThumbnailCache
    from retrieval.search import SearchEngine


@dataclass
class Services:
    """Everything the lifespan opens for one app."""

    engine: SearchEngine
    model: ModelRunner
    ingest: Ingestor
    jobs: JobRunner
    thumbnails: ThumbnailCache


async def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.state, "services", None)
    if services is None:
        raise ApiError(503, "the server is starting or shutting down; retry in a moment", kind="unavailable")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_settings(request: Request) -> Settings:
    return settings_of(request)


async def get_engine(services: ServicesDep) -> SearchEngine:
    return services.engine


async def get_model(services: ServicesDep) -> ModelRunner:
    return services.model


async def get_ingest(services: ServicesDep) -> Ingestor:
    return services.ingest


async def get_jobs(services: ServicesDep) -> JobRunner:
    return services.jobs


async def get_thumbnails(services: ServicesDep) -> ThumbnailCache:
    return services.thumbnails


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated["SearchEngine", Depends(get_engine)]
ModelDep = Annotated["ModelRunner", Depends(get_model)]
IngestDep = Annotated["Ingestor", Depends(get_ingest)]
JobsDep = Annotated["JobRunner", Depends(get_jobs)]
ThumbnailsDep = Annotated["ThumbnailCache", Depends(get_thumbnails)]

#: router dependencies: who may call, and how often
ReadAccess = [Depends(require_read), Depends(rate_limit)]
WriteAccess = [Depends(require_write), Depends(rate_limit)]
