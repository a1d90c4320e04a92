"""OpenAPI document (every error response documented as problem JSON) and its ``/docs`` page."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from api.auth import KEY_SCHEME, READ_KEY_SCHEME
from api.errors import PROBLEM_MEDIA_TYPE
from api.schemas import Problem
from api.settings import MAX_ID

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


def _integer_bounds(node: Any) -> None:
    """Integer fields' bounds as exact integers: the generator writes them as floats, and
    float(MAX_ID) rounds up to 2**63, so a client checking the document would accept ids the
    server refuses (a fuzzer sent 9223372036854775999)."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                value = node.get(key)
                if isinstance(value, float) and value.is_integer():
                    node[key] = MAX_ID if value == float(MAX_ID) else int(value)
        for child in node.values():
            _integer_bounds(child)
    elif isinstance(node, list):
        for child in node:
            _integer_bounds(child)


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
            _integer_bounds(schema)
            app.openapi_schema = _rewrite(schema)
        return app.openapi_schema

    setattr(app, "openapi", build)  # noqa: B010 - FastAPI's documented way to customize the schema



#: the docs page: Swagger UI's own assets only (no CDN); Swagger UI sets inline styles, hence 'unsafe-inline' for styles
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>imsearch API</title>
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/assets/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script src="docs/init.js"></script>
</body>
</html>
"""
# validatorUrl null: Swagger UI would otherwise send the document to validator.swagger.io
DOCS_INIT_JS = """"use strict";
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
"""


def install_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the ``swagger-ui-bundle`` package's files, its start-up script apart (CSP)."""
    import swagger_ui_bundle

    headers = {"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-cache"}

    async def docs() -> HTMLResponse:
        return HTMLResponse(DOCS_HTML, headers=headers)

    async def docs_init() -> Response:
        return Response(DOCS_INIT_JS, media_type="text/javascript", headers=headers)

    app.add_api_route("/docs", docs, include_in_schema=False)
    app.add_api_route("/docs/init.js", docs_init, include_in_schema=False)
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")
