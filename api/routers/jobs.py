"""Bulk index jobs over server-side folders: start, follow, cancel (API key required throughout)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from api.auth import require_admin_read
from api.deps import JobsDep, SettingsDep, WriteAccess
from api.openapi import WRITE_ERRORS, problems
from api.paths import confine
from api.ratelimit import rate_limit
from api.schemas import JobCreate, JobPublic, JobsResponse
from api.views import base, job_public

router = APIRouter(prefix="/jobs", tags=["jobs"])
#: starting and cancelling need a writable server; listing and following (still with a key) a read-only one too
Write = WriteAccess
AdminRead = [Depends(require_admin_read), Depends(rate_limit)]


@router.post(
    "",
    status_code=202,
    dependencies=Write,
    summary="Start indexing a server-side folder",
    responses=problems(*WRITE_ERRORS, 404),
)
def start_job(
    request: Request, body: JobCreate, jobs: JobsDep, settings: SettingsDep, response: Response
) -> JobPublic:
    """Index a folder under the allowed roots in the background; one job runs at a time (409 otherwise).

    Follow it with ``GET /api/v1/jobs/{id}``. Re-running over the same folder only indexes what changed.
    """
    root = confine(body.path, settings.allowed_roots)
    record = jobs.start(
        root,
        detect=settings.detect if body.detect is None else body.detect,
        segment=settings.segment if body.segment is None else body.segment,
        prune=body.prune,
    )
    response.headers["Location"] = f"{base(request)}/jobs/{record.id}"
    return job_public(record)


@router.get("", dependencies=AdminRead, summary="Recent jobs, newest first", responses=problems(*WRITE_ERRORS))
def list_jobs(jobs: JobsDep, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> JobsResponse:
    return JobsResponse(jobs=[job_public(j) for j in jobs.list(limit)])


@router.get(
    "/{job_id}",
    dependencies=AdminRead,
    summary="A job's status and progress",
    responses=problems(*WRITE_ERRORS, 404),
)
def get_job(job_id: str, jobs: JobsDep) -> JobPublic:
    return job_public(jobs.get(job_id))


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    dependencies=Write,
    summary="Cancel a running job",
    responses=problems(*WRITE_ERRORS, 404),
)
def cancel_job(job_id: str, jobs: JobsDep) -> JobPublic:
    """Stop after the work in flight is written; the job ends as ``cancelled``."""
    return job_public(jobs.cancel(job_id))

