"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error response has ``type``, ``title``, ``status`` and ``detail``; validation errors
add ``errors`` (where and what), rate limiting adds a ``Retry-After`` header. The library's
errors (:mod:`retrieval.errors`) map to statuses here, so routes just let them propagate.
Problem types are ``tag:`` URIs (RFC 4151), stable strings a client can match on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from retrieval.errors import (
    CatalogError,
    ImageDecodeError,
    ImsearchError,
    ModelFormatError,
    ModelMismatchError,
    NotFoundError,
    VectorIndexError,
)
from retrieval.files import FileAccessError, FileChangedError

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "tag:imsearch,2025:"


class ApiError(Exception):
    """Raise from a route or a dependency to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.title = title
        self.headers = dict(headers or {})
        self.extra = extra


class BodyTooLarge(StarletteHTTPException):
    """Raised by the body-limit middleware's ``receive`` once a request body passes the limit.

    An ``HTTPException``, so FastAPI lets it through its body parsing unchanged (anything
    else would become a 400) and the handler below answers 413 problem JSON.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over this server's limit of {limit} bytes; send a smaller one")
        self.limit = limit

    def response(self) -> JSONResponse:
        return body_too_large_response(self.limit)


class EarlyRefusal(StarletteHTTPException):
    """An :class:`ApiError` (a missing API key...) raised by the body-limit middleware before the body is read."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.status, error.detail, headers=error.headers)
        self.error = error

    def response(self) -> JSONResponse:
        e = self.error
        return problem_response(e.status, e.detail, kind=e.kind, title=e.title, headers=e.headers, **e.extra)


def body_too_large_response(limit: int, length: int | None = None) -> JSONResponse:
    size = f"is {length} bytes, " if length is not None else "is "
    return problem_response(
        413,
        f"the request body {size}over this server's limit of {limit} bytes; send a smaller image or body",
        kind="upload-too-large",
        title="Upload too large",
    )


def problem_type(kind: str | None) -> str:
    return TYPE_PREFIX + kind if kind else "about:blank"


def problem_response(
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    instance: str | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": problem_type(kind),
        "title": title or _phrase(status),
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_MEDIA_TYPE)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def status_of(exc: ImsearchError) -> tuple[int, str, str]:
    """(HTTP status, problem kind, title) of a library error."""
    if isinstance(exc, NotFoundError):
        return 404, "not-found", "Not found"
    if isinstance(exc, FileChangedError):
        return 409, "file-changed", "File changed since indexing"
    if isinstance(exc, FileAccessError):
        return 404, "file-unavailable", "File unavailable"
    if isinstance(exc, ImageDecodeError):
        if exc.reason.startswith("not a recognized image format"):
            return 415, "unsupported-image", "Unsupported image format"
        return 422, "unreadable-image", "Unreadable image"
    if isinstance(exc, CatalogError):
        return 409, "catalog-conflict", "Catalog refused the operation"
    if isinstance(exc, (ModelMismatchError, ModelFormatError, VectorIndexError)):
        return 500, "collection-broken", "The collection cannot serve this request"
    return 422, "invalid-request", "Invalid request"


def _json_safe(value: Any) -> Any:
    """``value`` as JSON can hold it: non-finite floats (NaN, 1e400 parsed as inf) become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        item = {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": err.get("type")}
        raw = err.get("input")
        if isinstance(raw, (str, int, float, bool)):  # scalars only: never echo a whole (large) body
            item["input"] = _json_safe(raw) if len(str(raw)) <= 200 else str(raw)[:200]
        out.append(item)
    return out


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error, expected or not, with a problem document."""

    @app.exception_handler(ApiError)
    async def _api_problem(request: Request, exc: ApiError) -> JSONResponse:
        return problem_response(
            exc.status, exc.detail, kind=exc.kind, title=exc.title, headers=exc.headers, **exc.extra
        )

    @app.exception_handler(ImsearchError)
    async def _library_error(request: Request, exc: ImsearchError) -> JSONResponse:
        status, kind, title = status_of(exc)
        if status >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc)
        return problem_response(status, str(exc), kind=kind, title=title)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        where = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5])
        return problem_response(
            422, f"the request is not valid: {where}", kind="validation", title="Validation failed", errors=errors
        )

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return exc.response()

    @app.exception_handler(EarlyRefusal)
    async def _refused(request: Request, exc: EarlyRefusal) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else _phrase(exc.status_code)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}; see /docs for the API"
        return problem_response(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error in %s %s", request.method, request.url.path)
        return problem_response(
            500,
            f"internal error ({type(exc).__name__}); the server log has the details",
            kind="internal",
            title="Internal server error",
        )
