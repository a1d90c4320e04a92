"""Pure ASGI middleware: request body size limit, security headers."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem_response


class BodyLimitMiddleware:
    """Refuse a request whose declared ``Content-Length`` is over ``max_bytes`` before reading it (413).

    Bodies sent without a length (chunked) are bounded where they are read: the upload
    routes read at most the limit plus one byte (Starlette spools multipart files to disk).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = dict(scope.get("headers") or []).get(b"content-length")
            if raw is not None:
                try:
                    length = int(raw)
                except ValueError:
                    length = -1
                if length < 0:
                    response = problem_response(400, "the Content-Length header is not a valid number")
                    await response(scope, receive, send)
                    return
                if length > self.max_bytes:
                    response = problem_response(
                        413,
                        f"the request body is {length} bytes, over this server's limit of {self.max_bytes}; "
                        "send a smaller image",
                        kind="upload-too-large",
                        title="Upload too large",
                    )
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


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
