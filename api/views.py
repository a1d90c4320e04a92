"""Turning engine and catalog records into response bodies (and the URLs they link to)."""

from __future__ import annotations

from fastapi import Request

from api.jobs import FINISHED
from api.schemas import (
    HitPublic,
    ImagePublic,
    JobPublic,
    LabelPublic,
    QueryPublic,
    RegionPublic,
    SearchResponse,
)
from retrieval.search import Hit, SearchEngine, SearchResult
from retrieval.store import catalog
from retrieval.store.catalog import JobRecord

API_PREFIX = "/api/v1"
PROBLEM_CONTENT = "application/problem+json"


def base(request: Request) -> str:
    """URL prefix of the API, behind a proxy's root path too."""
    return str(request.scope.get("root_path", "")).rstrip("/") + API_PREFIX


def image_urls(request: Request, image_id: int) -> tuple[str, str]:
    prefix = f"{base(request)}/images/{image_id}"
    return f"{prefix}/original", f"{prefix}/thumbnail"


def hit_public(request: Request, hit: Hit) -> HitPublic:
    original, thumbnail = image_urls(request, hit.image_id)
    return HitPublic(
        image_id=str(hit.image_id),
        score=round(hit.score, 6),
        path=hit.path,
        width=hit.width,
        height=hit.height,
        labels=[LabelPublic(label=x.label, source=x.source, score=x.score, area=x.area) for x in hit.labels],
        box=hit.box,
        region_label=hit.region_label,
        thumbnail_url=thumbnail,
        original_url=original,
    )


def search_response(request: Request, result: SearchResult, *, k: int, image_id: int | None) -> SearchResponse:
    return SearchResponse(
        query=QueryPublic(image_id=None if image_id is None else str(image_id), box=result.query_box),
        k=k,
        offset=result.offset,
        next_offset=result.next_offset,
        took_ms=round(result.took_ms, 3),
        timings={name: round(ms, 3) for name, ms in result.timings.items()},
        hits=[hit_public(request, h) for h in result.hits],
    )


def image_public(request: Request, engine: SearchEngine, image_id: int) -> ImagePublic:
    record = engine.image(image_id)
    collection = engine.collection
    labels = collection.read(catalog.get_labels, image_ids=[image_id])[image_id]
    regions = collection.read(catalog.get_regions, image_ids=[image_id])
    files = collection.read(catalog.get_files, image_id=image_id)
    original, thumbnail = image_urls(request, image_id)
    return ImagePublic(
        id=str(record.id),
        sha256=record.sha256,
        path=record.path,
        stored=record.stored_path is not None,
        width=record.width,
        height=record.height,
        format=record.format,
        size_bytes=record.size_bytes,
        exif_time=record.exif_time,
        added_at=record.added_at,
        labels=[
            LabelPublic(label=x.label, source=x.source, score=x.max_score, area=x.area_fraction)
            for x in sorted(labels, key=lambda r: -r.max_score)
        ],
        regions=[
            RegionPublic(
                id=str(r.id), box=(r.x0, r.y0, r.x1, r.y1), source=r.source, label=r.label, score=r.score
            )
            for r in regions
        ],
        files=[f.path for f in files],
        original_url=original,
        thumbnail_url=thumbnail,
    )


def job_public(record: JobRecord) -> JobPublic:
    return JobPublic(
        id=record.id,
        kind=record.kind,
        status=record.status,  # type: ignore[arg-type]
        params=record.params,
        total=record.total,
        done=record.done,
        failed=record.failed,
        skipped=record.skipped,
        message=record.message,
        created_at=record.created_at,
        updated_at=record.updated_at,
        finished=record.status in FINISHED,
    )
