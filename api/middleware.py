"""Pure ASGI middleware: body limits counted as bodies stream (key checked first), security headers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import API_KEY_HEADER, access_refusal, require_read, require_write
from api.errors import ApiError, BodyTooLarge, EarlyRefusal, body_too_large_response, problem_response
from api.settings import Settings

logger = logging.getLogger(__name__)


#: room for the multipart framing and the form fields around an upload of ``max_upload_bytes``
FORM_OVERHEAD = 64 * 1024
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class _Access:
    write: bool
    read: bool


def _auth_calls(dependant: Dependant) -> set[Callable[..., Any]]:
    calls: set[Callable[..., Any]] = set()
    stack = [dependant]
    while stack:
        dep = stack.pop()
        if dep.call is not None:
            calls.add(dep.call)
        stack.extend(dep.dependencies)
    return calls


class BodyLimitMiddleware:
    """Request bodies counted as they stream, whatever the framing; keyed writes refused before they are read.

    * ``Content-Length`` is only a hint: over the limit, 413 at once; under it, the body
      is still counted. ``receive`` is wrapped: the chunk that passes the limit raises
      :class:`~api.errors.BodyTooLarge` (413 problem JSON) instead of reaching the route, so
      a chunked upload never gets further than the limit (Starlette closes the multipart
      parser's spooled files when the parse fails).
    * Limits: ``max_upload_bytes`` plus :data:`FORM_OVERHEAD` for ``multipart/form-data``,
      ``max_json_bytes`` for any other body.
    * The first ``receive`` of a request (routing is done by then, the body not yet read)
      checks the API key the route needs (a write always; a read when ``read_requires_key``):
      a refusal raises :class:`~api.errors.EarlyRefusal` with the very problem the route's
      dependency would give (:func:`api.auth.access_refusal`), before a byte of the body
      is taken from the connection.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.max_form_bytes = settings.max_upload_bytes + FORM_OVERHEAD
        self.max_other_bytes = settings.max_json_bytes
        self._access: dict[int, _Access] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        limit = self.max_form_bytes if content_type == "multipart/form-data" else self.max_other_bytes
        early = self._length_refusal(headers, limit)
        if early is not None:
            await early(scope, receive, send)
            return

        started = False
        checked = scope["method"] in SAFE_METHODS
        received = 0

        async def counted_receive() -> Message:
            nonlocal received, checked
            if not checked:
                checked = True
                refusal = self._key_refusal(scope, headers)
                if refusal is not None:
                    raise EarlyRefusal(refusal)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if started:  # the app answered already (a streamed response listening for disconnects)
                        return {"type": "http.disconnect"}
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except (BodyTooLarge, EarlyRefusal) as exc:  # raised outside a FastAPI route's body parsing
            if started:
                raise
            logger.info("%s %s: refused while reading the body: %s", scope["method"], scope["path"], exc.detail)
            await exc.response()(scope, receive, send)

    @staticmethod
    def _length_refusal(headers: Headers, limit: int) -> ASGIApp | None:
        """413 (or 400) from the declared ``Content-Length`` alone, if it says so."""
        raw = headers.get("content-length")
        if raw is None:
            return None
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            return problem_response(400, "the Content-Length header is not a valid number")
        if length > limit:
            return body_too_large_response(limit, length)
        return None

    def _key_refusal(self, scope: Scope, headers: Headers) -> ApiError | None:
        """The API-key refusal of the FastAPI route this request was routed to (``scope["route"]``), if any."""
        route = scope.get("route")
        if not isinstance(route, APIRoute):
            return None
        access = self._access.get(id(route))
        if access is None:
            calls = _auth_calls(route.dependant)
            access = _Access(write=require_write in calls, read=require_read in calls)
            self._access[id(route)] = access
        if not (access.write or access.read):
            return None
        return access_refusal(self.settings, headers.get(API_KEY_HEADER), write=access.write)


class SecurityHeadersMiddleware:
    """``X-Content-Type-Options: nosniff`` and ``Referrer-Policy`` on every response."""

    HEADERS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"))

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in self.HEADERS if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
