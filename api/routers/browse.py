"""Browsing the collection: a sorted, filtered page of images (with label facets), and the
files that failed to index under a folder (what an index job could not read, and why)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from api.deps import EngineDep, ReadAccess
from api.openapi import READ_ERRORS, problems
from api.schemas import (
    MAX_LABELS,
    BrowseSort,
    FailurePublic,
    FailuresResponse,
    ImagesResponse,
    ImageSummary,
    LabelCount,
    LabelName,
)
from api.views import image_urls
from retrieval.store import catalog

router = APIRouter(tags=["collection"], dependencies=ReadAccess)

MAX_PAGE = 200
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL
Prefix = Annotated[
    str | None, Query(max_length=4096, pattern=NO_NUL, description="only images with a path starting with this")
]


@router.get("/images", summary="Browse the collection, a page at a time", responses=problems(*READ_ERRORS))
def list_images(
    *,
    request: Request,
    engine: EngineDep,
    offset: Annotated[int, Query(ge=0, le=2**31, description="skip this many images")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="at most this many images")] = 60,
    sort: Annotated[
        BrowseSort,
        Query(description="added / exif_time (taken, else added) / path; a leading '-' is newest first"),
    ] = "-added",
    label: Annotated[
        list[LabelName],
        Query(max_length=MAX_LABELS, description="only images with every one of these labels (repeat the field)"),
    ] = [],  # noqa: B006 - FastAPI copies query defaults
    prefix: Prefix = None,
    min_score: Annotated[float, Query(ge=0.0, le=1.0, description="a label counts from this confidence on")] = 0.0,
    facets: Annotated[bool, Query(description="also count the labels among the images passing the filter")] = False,
) -> ImagesResponse:
    collection = engine.collection
    page = collection.read(
        catalog.list_images, offset=offset, limit=limit, sort=sort, labels=label, prefix=prefix, min_score=min_score
    )
    counted = (
        collection.read(catalog.label_facets, labels=label, prefix=prefix, min_score=min_score) if facets else None
    )
    items = []
    for record in page.items:
        original, thumbnail = image_urls(request, record.id)
        items.append(
            ImageSummary(
                id=str(record.id),
                path=record.path,
                width=record.width,
                height=record.height,
                format=record.format,
                size_bytes=record.size_bytes,
                exif_time=record.exif_time,
                added_at=record.added_at,
                labels=page.labels.get(record.id, []),
                thumbnail_url=thumbnail,
                original_url=original,
            )
        )
    end = offset + len(items)
    return ImagesResponse(
        offset=offset,
        limit=limit,
        sort=sort,
        total=page.total,
        next_offset=end if end < page.total else None,
        items=items,
        facets=None if counted is None else [LabelCount(label=lab, count=n) for lab, n in counted],
    )


@router.get("/failures", summary="Files that failed to index under a folder", responses=problems(*READ_ERRORS))
def list_failures(
    engine: EngineDep,
    prefix: Annotated[str, Query(min_length=1, max_length=4096, pattern=NO_NUL, description="a folder or path prefix")],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> FailuresResponse:
    """Why files were not indexed (undecodable, too large...), by path; an index job's folder as ``prefix``."""
    found = engine.collection.read(catalog.failures_under, prefix=prefix, limit=limit)
    return FailuresResponse(
        prefix=prefix, failures=[FailurePublic(path=f.path, reason=f.reason, at=f.at) for f in found]
    )
