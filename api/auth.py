"""API keys: writes always need one (header ``X-API-Key``), reads when the settings say so.

The same rules also run in :class:`api.middleware.BodyLimitMiddleware` before a write's body
is read (:func:`access_refusal`), so an unauthenticated upload is refused without being received.

Keys are compared in constant time (``hmac.compare_digest`` over SHA-256 digests, against
every configured key, so neither the position of a match nor a key's length shows in the
timing). With no key configured, writes are refused rather than open to anyone.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from api.errors import ApiError
from api.settings import Settings

API_KEY_HEADER = "X-API-Key"

KEY_SCHEME = "ApiKey"
#: reads declare this scheme; the OpenAPI document turns it into KEY_SCHEME, optional or required per the settings
READ_KEY_SCHEME = "ApiKeyForReads"

api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name=KEY_SCHEME,
    auto_error=False,
    description="an API key from the server's IMSEARCH_API_KEYS setting",
)
read_key_header = APIKeyHeader(name=API_KEY_HEADER, scheme_name=READ_KEY_SCHEME, auto_error=False)
ApiKey = Annotated[str | None, Security(api_key_header)]
ReadApiKey = Annotated[str | None, Security(read_key_header)]


def key_matches(given: str, keys: list[bytes]) -> bool:
    """True when ``given`` is one of ``keys``; constant time in the keys' contents and lengths."""
    digest = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    found = False
    for key in keys:
        found |= hmac.compare_digest(digest, hashlib.sha256(key).digest())
    return found


def client_identity(request: Request, key: str | None) -> str:
    """Who is asking, for rate limiting: a digest of the key when one is sent, else the address."""
    if key:
        return "key:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return "ip:" + (request.client.host if request.client else "unknown")


def _check_key(settings: Settings, key: str | None, what: str) -> None:
    keys = settings.key_values()
    if not keys:
        raise ApiError(
            403,
            f"{what} is disabled: the server has no API keys configured; set IMSEARCH_API_KEYS and restart it",
            kind="no-api-keys",
            title="Writes disabled",
        )
    challenge = {"WWW-Authenticate": f'APIKey header="{API_KEY_HEADER}"'}
    if not key:
        raise ApiError(
            401,
            f"{what} needs an API key: send it in the {API_KEY_HEADER} header",
            kind="missing-api-key",
            title="API key required",
            headers=challenge,
        )
    if not key_matches(key, keys):
        raise ApiError(
            401,
            f"the API key in the {API_KEY_HEADER} header is not valid",
            kind="invalid-api-key",
            title="Invalid API key",
            headers=challenge,
        )


def _check_write(settings: Settings, key: str | None) -> None:
    _check_key(settings, key, "this operation")
    if settings.read_only:
        raise ApiError(
            409,
            "the server runs read-only (IMSEARCH_READ_ONLY); restart it writable to add, delete or index",
            kind="read-only",
            title="Read-only server",
        )


def access_refusal(settings: Settings, key: str | None, *, write: bool) -> ApiError | None:
    """The error a request with ``key`` gets from :func:`require_write` (``write``) or :func:`require_read`.

    None when it may go on. For checks outside a route (the body-limit middleware).
    """
    try:
        if write:
            _check_write(settings, key)
        elif settings.read_requires_key:
            _check_key(settings, key, "reading from this server")
    except ApiError as exc:
        return exc
    return None


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def require_read(request: Request, key: ReadApiKey) -> None:
    """Reads (search, images, labels...): open unless ``read_requires_key``."""
    settings = settings_of(request)
    if settings.read_requires_key:
        _check_key(settings, key, "reading from this server")


async def require_write(request: Request, key: ApiKey) -> None:
    """Writes and admin (add, delete, jobs): always a valid key, and a writable collection."""
    _check_write(settings_of(request), key)


async def require_admin_read(request: Request, key: ApiKey) -> None:
    """Admin reads (the job list and status): a valid key, on a writable or a read-only server."""
    _check_key(settings_of(request), key, "this operation")
