"""OpenAPI document: every error response is documented as problem JSON."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.auth import KEY_SCHEME, READ_KEY_SCHEME
from api.errors import PROBLEM_MEDIA_TYPE
from api.schemas import Problem

_REF = {"$ref": "#/components/schemas/Problem"}
READ_ERRORS = (400, 401, 422, 429)
WRITE_ERRORS = (400, 401, 403, 409, 422, 429)


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for error statuses (rewritten to problem+json by :func:`install_openapi`)."""
    return {code: {"model": Problem, "description": HTTPStatus(code).phrase} for code in sorted(set(codes))}


def _rewrite(schema: dict[str, Any]) -> dict[str, Any]:
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            for code, response in operation.get("responses", {}).items():
                if str(code)[0] in "45":
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": _REF}}
                    if str(code) == "422":
                        response["description"] = "Validation failed, or an unusable image or option"
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}"))
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def _read_security(schema: dict[str, Any], open_reads: bool) -> None:
    """Reads declare READ_KEY_SCHEME; document them with the one key scheme, optional when reads are open."""
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            security = operation.get("security") if isinstance(operation, dict) else None
            if security and any(READ_KEY_SCHEME in item for item in security):
                operation["security"] = [{}, {KEY_SCHEME: []}] if open_reads else [{KEY_SCHEME: []}]
    schemes = schema.get("components", {}).get("securitySchemes", {})
    read = schemes.pop(READ_KEY_SCHEME, None)
    if read is not None:
        schemes.setdefault(KEY_SCHEME, read)


def _server_limits(schema: dict[str, Any], max_k: int) -> None:
    """The models allow k up to 1000; this server's cap (``max_k``) is what the document states."""
    for model in schema.get("components", {}).get("schemas", {}).values():
        k = model.get("properties", {}).get("k")
        if isinstance(k, dict) and "maximum" in k:
            k["maximum"] = max_k


def install_openapi(app: FastAPI) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _read_security(schema, open_reads=not app.state.settings.read_requires_key)
            _server_limits(schema, app.state.settings.max_k)
            app.openapi_schema = _rewrite(schema)
        return app.openapi_schema

    setattr(app, "openapi", build)  # noqa: B010 - FastAPI's documented way to customize the schema

