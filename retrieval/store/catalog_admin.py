"""Catalog functions for bookkeeping: descriptor models, failures, jobs, key/value meta, stats."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from retrieval.errors import CatalogError, NotFoundError
from retrieval.store import tables as t
from retrieval.store._sql import chunks, rowcount, upsert, utcnow
from retrieval.store.records import CatalogStats, FailureRecord, JobRecord, ModelRecord
from retrieval.store.tables import JOB_STATUSES, SPACES


def _json_object(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    data = dict(value or {})
    try:
        json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise CatalogError(f"{what} must be JSON-serializable: {exc}") from exc
    return data


def register_model(
    session: Session, *, fingerprint: str, name: str, meta: Mapping[str, Any], activate: bool = True
) -> ModelRecord:
    """Record a descriptor model (or find it again by ``fingerprint``); make it the active one unless told not to."""
    if not fingerprint:
        raise CatalogError("a model fingerprint must not be empty")
    row = {
        "fingerprint": fingerprint,
        "name": name,
        "meta": _json_object(meta, "model meta"),
        "created_at": utcnow(),
        "is_active": False,
    }
    upsert(session, t.models, [row], keys=["fingerprint"], update=["name", "meta"])
    if session.get_bind().dialect.name == "postgresql":  # serialize activations (SQLite: the write lock)
        session.execute(sa.text("LOCK TABLE models IN SHARE ROW EXCLUSIVE MODE"))
    m = t.models.c
    model_id = session.execute(sa.select(m.id).where(m.fingerprint == fingerprint)).scalar_one()
    if activate:
        session.execute(sa.update(t.models).where(m.is_active, m.id != model_id).values(is_active=False))
        session.execute(sa.update(t.models).where(m.id == model_id).values(is_active=True))
    record = get_model(session, model_id=model_id)
    if record is None:  # pragma: no cover - just written in this transaction
        raise CatalogError(f"model {fingerprint!r} vanished right after being registered")
    return record


def get_model(session: Session, *, model_id: int) -> ModelRecord | None:
    row = session.execute(sa.select(t.models).where(t.models.c.id == int(model_id))).first()
    return None if row is None else ModelRecord(**row._mapping)


def get_active_model(session: Session) -> ModelRecord | None:
    """The model the stored vectors are meant to come from (``None`` before any registration)."""
    row = session.execute(sa.select(t.models).where(t.models.c.is_active)).first()
    return None if row is None else ModelRecord(**row._mapping)


def list_models(session: Session) -> list[ModelRecord]:
    query = sa.select(t.models).order_by(t.models.c.id)
    return [ModelRecord(**row._mapping) for row in session.execute(query)]


def record_failure(session: Session, *, path: str, reason: str, size_bytes: int, mtime_ns: int) -> None:
    """Remember that ``path`` (at this size and mtime) failed to index, and why."""
    row = {"path": path, "reason": reason, "size_bytes": size_bytes, "mtime_ns": mtime_ns, "at": utcnow()}
    upsert(session, t.failures, [row], keys=["path"], update=["reason", "size_bytes", "mtime_ns", "at"])


def get_failure(session: Session, *, path: str) -> FailureRecord | None:
    row = session.execute(sa.select(t.failures).where(t.failures.c.path == path)).first()
    return None if row is None else FailureRecord(**row._mapping)


def get_failures_by_path(session: Session, *, paths: Sequence[str]) -> dict[str, FailureRecord]:
    """The recorded failures among ``paths`` (bulk lookup)."""
    found: dict[str, FailureRecord] = {}
    for chunk in chunks(sorted(set(paths))):
        for row in session.execute(sa.select(t.failures).where(t.failures.c.path.in_(chunk))):
            rec = FailureRecord(**row._mapping)
            found[rec.path] = rec
    return found


def clear_failures(session: Session, *, paths: Sequence[str]) -> int:
    """Forget the failures of ``paths``; returns how many there were."""
    removed = 0
    for chunk in chunks(sorted(set(paths))):
        removed += rowcount(session.execute(sa.delete(t.failures).where(t.failures.c.path.in_(chunk))))
    return removed


def clear_failure(session: Session, *, path: str) -> bool:
    """Forget the failure of ``path``; True when there was one."""
    return clear_failures(session, paths=[path]) > 0


def list_failures(session: Session, *, limit: int | None = None, offset: int = 0) -> list[FailureRecord]:
    """Failures sorted by path (all of them when ``limit`` is None)."""
    query = sa.select(t.failures).order_by(t.failures.c.path).offset(offset).limit(limit)
    return [FailureRecord(**row._mapping) for row in session.execute(query)]


def _check_status(status: str) -> str:
    if status not in JOB_STATUSES:
        raise CatalogError(f"unknown job status {status!r}; valid statuses: {', '.join(JOB_STATUSES)}")
    return status


def create_job(session: Session, *, kind: str, params: Mapping[str, Any] | None = None, total: int = 0) -> JobRecord:
    """A new job in status ``"queued"`` with a fresh UUID."""
    now = utcnow()
    row: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "kind": kind,
        "status": "queued",
        "params": _json_object(params, "job params"),
        "total": int(total),
        "done": 0,
        "failed": 0,
        "skipped": 0,
        "message": None,
        "created_at": now,
        "updated_at": now,
    }
    session.execute(sa.insert(t.jobs).values(**row))
    return JobRecord(**row)


def update_job(
    session: Session,
    *,
    job_id: str,
    status: str | None = None,
    total: int | None = None,
    done: int | None = None,
    failed: int | None = None,
    skipped: int | None = None,
    message: str | None = None,
) -> JobRecord:
    """Set the given fields of job ``job_id`` (None leaves a field as it is); returns the job."""
    values: dict[str, Any] = {"updated_at": utcnow()}
    if status is not None:
        values["status"] = _check_status(status)
    for name, value in (("total", total), ("done", done), ("failed", failed), ("skipped", skipped)):
        if value is not None:
            if value < 0:
                raise CatalogError(f"job counter {name} must not be negative, got {value}")
            values[name] = int(value)
    if message is not None:
        values["message"] = message
    if rowcount(session.execute(sa.update(t.jobs).where(t.jobs.c.id == job_id).values(**values))) == 0:
        raise NotFoundError(f"no job with id {job_id!r}")
    record = get_job(session, job_id=job_id)
    if record is None:  # pragma: no cover - just updated in this transaction
        raise NotFoundError(f"no job with id {job_id!r}")
    return record


def get_job(session: Session, *, job_id: str) -> JobRecord | None:
    row = session.execute(sa.select(t.jobs).where(t.jobs.c.id == job_id)).first()
    return None if row is None else JobRecord(**row._mapping)


def list_jobs(session: Session, *, status: str | None = None, limit: int = 50) -> list[JobRecord]:
    """Jobs, newest first."""
    query = sa.select(t.jobs).order_by(t.jobs.c.created_at.desc(), t.jobs.c.id).limit(limit)
    if status is not None:
        query = query.where(t.jobs.c.status == _check_status(status))
    return [JobRecord(**row._mapping) for row in session.execute(query)]


def get_meta(session: Session, *, key: str) -> str | None:
    return session.execute(sa.select(t.meta.c.value).where(t.meta.c.key == key)).scalar()


def set_meta(session: Session, *, key: str, value: str) -> None:
    upsert(session, t.meta, [{"key": key, "value": str(value)}], keys=["key"], update=["value"])


def stats(session: Session) -> CatalogStats:
    """Row counts: images, files, vectors per space, regions, labels, failures, jobs."""

    def count(table: sa.Table) -> sa.ScalarSelect[int]:
        return sa.select(sa.func.count()).select_from(table).scalar_subquery()

    tables = (t.images, t.files, t.regions, t.labels, t.failures, t.jobs)
    row = session.execute(sa.select(*(count(table) for table in tables))).one()
    per_space = dict.fromkeys(SPACES, 0)
    by_space = sa.select(t.vectors.c.space, sa.func.count()).group_by(t.vectors.c.space)
    for space, n in session.execute(by_space):
        per_space[space] = int(n)
    images, files, regions, labels, failures, jobs = (int(v) for v in row)
    return CatalogStats(
        images=images,
        files=files,
        vectors=per_space,
        regions=regions,
        labels=labels,
        failures=failures,
        jobs=jobs,
    )
