"""Views of the whole collection: health, stats, labels, near-duplicate groups, calibrated match levels."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from api.deps import EngineDep, JobsDep, ReadAccess, SettingsDep
from api.errors import ApiError
from api.openapi import READ_ERRORS, problems
from api.schemas import (
    CalibrationPublic,
    DuplicateGroupPublic,
    DuplicatesResponse,
    Health,
    IndexInfo,
    LabelCount,
    LabelsResponse,
    LevelPublic,
    StatsResponse,
)
from api.views import job_public
from retrieval import __version__

health_router = APIRouter(tags=["collection"])
router = APIRouter(tags=["collection"], dependencies=ReadAccess)


@health_router.get("/health", summary="Liveness and readiness", responses=problems(503))
async def health(engine: EngineDep) -> Health:
    """200 once the collection is open (no key, no rate limit: for load balancers)."""
    return Health(status="ok", version=__version__, images=engine.collection.count("image"))


@router.get("/stats", summary="Collection statistics", responses=problems(*READ_ERRORS))
def stats(engine: EngineDep, jobs: JobsDep, settings: SettingsDep) -> StatsResponse:
    st = engine.stats()
    running = jobs.running()
    return StatsResponse(
        images=st["images"],
        files=st["files"],
        regions=st["regions"],
        labels=st["labels"],
        failures=st["failures"],
        vectors=st["vectors"],
        model=st["model"],
        model_fingerprint=st["model_fingerprint"],
        model_engine=engine.extractor.engine,
        dim=st["dim"],
        index={space: IndexInfo(**info) for space, info in st["index"].items()},
        database=st["database"],
        read_only=settings.read_only,
        running_job=job_public(running) if running is not None else None,
        calibration=st["calibration"],
    )


@router.get("/labels", summary="Known labels with image counts", responses=problems(*READ_ERRORS))
def labels(
    engine: EngineDep,
    min_score: Annotated[float, Query(ge=0.0, le=1.0, description="count a label from this confidence on")] = 0.0,
) -> LabelsResponse:
    counted = engine.labels(min_score=min_score)
    return LabelsResponse(min_score=min_score, labels=[LabelCount(label=lab, count=n) for lab, n in counted])


@router.get("/duplicates", summary="Groups of near-duplicate images", responses=problems(*READ_ERRORS))
def duplicates(
    request: Request,
    engine: EngineDep,
    threshold: Annotated[
        float | None,
        Query(gt=0.0, le=1.0, description="pairs scoring at least this are duplicates (default: the calibrated "
              "copy threshold, else 0.95)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="largest groups first, at most this many")] = 100,
) -> DuplicatesResponse:
    used, source = (threshold, "request") if threshold is not None else engine.duplicate_threshold()
    groups = engine.duplicates(used)
    return DuplicatesResponse(
        threshold=used,
        threshold_source=source,  # type: ignore[arg-type]  # one of the Literal's values
        total_groups=len(groups),
        groups=[
            DuplicateGroupPublic(
                image_ids=[str(i) for i in g.image_ids], paths=list(g.paths), min_score=round(g.min_score, 6)
            )
            for g in groups[:limit]
        ],
    )


@router.get("/calibration", summary="Calibrated match levels", responses=problems(*READ_ERRORS, 404))
def calibration(engine: EngineDep) -> CalibrationPublic:
    """The thresholds of the match levels (copy, near, similar) measured for the collection's current
    model, with their precision and recall on the calibration sample; 404 when not calibrated."""
    cal = engine.calibration
    if cal is None:
        raise ApiError(
            404, "the collection has no calibration for its current model; run `imsearch calibrate`",
            kind="not-calibrated", title="Collection not calibrated",
        )
    return CalibrationPublic(
        model_fingerprint=cal.model_fingerprint,
        created=cal.created,
        levels=[LevelPublic(**vars(lv)) for lv in cal.levels],
        photos=cal.photos,
        copies_per_photo=cal.copies_per_photo,
        positives=cal.positives,
        negatives=cal.negatives,
        collection_size=cal.collection_size,
        seed=cal.seed,
        copy_precision=cal.copy_precision,
        near_precision=cal.near_precision,
    )
