"""Access control through the real app: API keys on and off, read-only, server-side paths, CORS, rate limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.auth import key_matches
from api.errors import ApiError
from api.paths import confine
from api.ratelimit import RateLimiter
from tests.api.conftest import API_KEY, OTHER_KEY, Layout, build_collection, make_settings, running, upload

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def data_dir(layout: Layout, small_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("api-security")
    build_collection(folder, None, small_model, layout.library_photos()[:3])
    return folder


@pytest.fixture(scope="module")
def settings_for(data_dir: Path, layout: Layout) -> Any:
    def make(**overrides: Any) -> Any:
        return make_settings(data_dir, None, layout, **overrides)

    return make


@pytest.fixture(scope="module")
def client(settings_for: Any) -> Iterator[Any]:
    """The writable app; the variants below open the same collection read-only next to it
    (so it saves its index after every write: a reader opening meanwhile sees the writes)."""
    with running(settings_for(save_every_s=0)) as c:
        yield c


def first_id(client: Any, headers: dict[str, str] | None = None) -> str:
    r = client.post("/api/v1/search/image", files=upload(_any_photo()), data={"k": 1}, headers=headers or {})
    assert r.status_code == 200, r.text
    return str(r.json()["hits"][0]["image_id"])


def _any_photo() -> Path:
    from tests.imagefactory import real_photos

    return real_photos(1)[0]


def assert_problem(r: Any, status: int, kind: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = dict(r.json())
    assert body["status"] == status and body["title"] and body["detail"]
    if kind is not None:
        assert body["type"] == f"tag:imsearch,2025:{kind}", body
    return body


def test_key_matches() -> None:
    keys = [b"first-key-123", b"second-key-456"]
    assert key_matches("first-key-123", keys) and key_matches("second-key-456", keys)
    assert not key_matches("first-key-12", keys) and not key_matches("", keys) and not key_matches("x", [])
    assert not key_matches("first-key-123\x00", keys)


def test_writes_need_a_valid_key(client: Any, layout: Layout) -> None:
    path = layout.extra / "lotus_image_0001.jpg"
    r = client.post("/api/v1/images", files=upload(path))
    assert_problem(r, 401, "missing-api-key")
    assert r.headers["www-authenticate"] == 'APIKey header="X-API-Key"'
    assert_problem(client.post("/api/v1/images", files=upload(path), headers={"X-API-Key": "wrong-key-1"}), 401,
                   "invalid-api-key")
    assert_problem(client.delete("/api/v1/images/1"), 401)
    assert_problem(client.get("/api/v1/jobs"), 401)
    assert_problem(client.post("/api/v1/images/from-path", json={"path": str(path)}), 401)
    # both configured keys work (404: past the key check, the image does not exist)
    for key in (API_KEY, OTHER_KEY):
        assert_problem(client.delete("/api/v1/images/1", headers={"X-API-Key": key}), 404, "not-found")
    # reads are open by default
    image_id = first_id(client)
    reads = ("/api/v1/labels", "/api/v1/stats", f"/api/v1/images/{image_id}", f"/api/v1/images/{image_id}/thumbnail")
    for url in reads:
        assert client.get(url).status_code == 200, url


def test_reads_can_require_a_key_and_read_only_refuses_writes(settings_for: Any, layout: Layout) -> None:
    with running(settings_for(read_requires_key=True, read_only=True)) as c:
        assert_problem(c.get("/api/v1/labels"), 401, "missing-api-key")
        assert_problem(c.post("/api/v1/search/id", json={"image_id": 1}), 401)
        assert c.get("/api/v1/labels", headers={"X-API-Key": API_KEY}).status_code == 200
        image_id = first_id(c, {"X-API-Key": API_KEY})
        assert_problem(c.get(f"/api/v1/images/{image_id}/original"), 401)
        assert c.get("/api/v1/health").status_code == 200  # for load balancers
        assert c.get("/").status_code == 200  # the page itself asks for the key
        lotus = upload(layout.extra / "lotus_image_0001.jpg")
        r = c.post("/api/v1/images", files=lotus, headers={"X-API-Key": API_KEY})
        assert_problem(r, 409, "read-only")
        assert c.get("/api/v1/stats", headers={"X-API-Key": API_KEY}).json()["read_only"] is True
        # jobs can still be listed (with a key), not started
        jobs = c.get("/api/v1/jobs", headers={"X-API-Key": API_KEY})
        assert jobs.status_code == 200 and isinstance(jobs.json()["jobs"], list), jobs.text
        assert_problem(c.get("/api/v1/jobs"), 401, "missing-api-key")
        started = c.post("/api/v1/jobs", json={"path": str(layout.incoming)}, headers={"X-API-Key": API_KEY})
        assert_problem(started, 409, "read-only")


def test_without_keys_writes_are_disabled_and_without_roots_paths_are(settings_for: Any, layout: Layout) -> None:
    variant = settings_for(api_keys=[], allowed_roots=[], cors_origins=["http://app.example"], read_only=True)
    with running(variant) as c:
        lotus = upload(layout.extra / "lotus_image_0001.jpg")
        r = c.post("/api/v1/images", files=lotus, headers={"X-API-Key": "x" * 10})
        assert "IMSEARCH_API_KEYS" in assert_problem(r, 403, "no-api-keys")["detail"]
        assert c.get("/api/v1/labels").status_code == 200
        # CORS: the configured origin may call with the key header; others get no CORS grant
        pre = c.options(
            "/api/v1/search/id",
            headers={
                "Origin": "http://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "X-API-Key, Content-Type",
            },
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://app.example"
        assert "x-api-key" in pre.headers["access-control-allow-headers"].lower()
        other = c.get("/api/v1/labels", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    with pytest.raises(ApiError) as err:
        confine(str(layout.extra / "lotus_image_0001.jpg"), [])
    assert err.value.status == 403 and err.value.kind == "paths-disabled"


def test_server_side_paths_stay_in_the_roots(client: Any, layout: Layout) -> None:
    key = {"X-API-Key": API_KEY}

    def add(path: str) -> Any:
        return client.post("/api/v1/images/from-path", json={"path": path}, headers=key)

    secret = layout.outside / "secret.jpg"
    assert_problem(add(str(secret)), 403, "path-outside-roots")
    assert_problem(add(f"{layout.allowed}/library/../../outside/secret.jpg"), 403, "path-outside-roots")
    body = assert_problem(add(str(layout.allowed / "escape.jpg")), 403, "path-outside-roots")
    assert str(layout.outside) not in body["detail"] and "secret" not in body["detail"]  # where the link goes: untold
    assert_problem(add(str(layout.allowed / "escape_dir" / "secret.jpg")), 403, "path-outside-roots")
    assert_problem(add("allowed/extra/lotus_image_0001.jpg"), 422, "validation")  # not absolute
    assert_problem(add(str(layout.extra) + "/\x00.jpg"), 422, "validation")
    with pytest.raises(ApiError) as err:
        confine("allowed/extra", [layout.allowed])
    assert err.value.status == 422 and err.value.kind == "invalid-path"
    assert_problem(add(str(layout.extra)), 404)  # a folder is not an image file
    assert add(str(layout.extra / "lotus_image_0001.jpg")).status_code == 201
    assert confine(str(layout.library), [layout.allowed]) == layout.library.resolve()


def test_security_headers(client: Any) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert client.get("/api/v1/labels").headers["x-content-type-options"] == "nosniff"


def test_rate_limit(settings_for: Any) -> None:
    with running(settings_for(rate_limit_per_minute=6, rate_limit_burst=3, read_only=True)) as c:
        for _ in range(3):
            assert c.get("/api/v1/labels").status_code == 200
        r = c.get("/api/v1/labels")
        body = assert_problem(r, 429, "rate-limited")
        assert 1 <= int(r.headers["retry-after"]) <= 10 and "per minute" in body["detail"]
        assert c.get("/api/v1/labels", headers={"X-API-Key": API_KEY}).status_code == 200  # another client
        made_up = c.get("/api/v1/labels", headers={"X-API-Key": "made-up-key-123"})
        assert_problem(made_up, 429, "rate-limited")  # an invalid key is no new client
        assert c.get("/api/v1/health").status_code == 200  # never limited


def test_rate_limiter_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    assert limiter.hit("a") is None and limiter.hit("a") is None
    wait = limiter.hit("a")
    assert wait == pytest.approx(1.0)
    assert limiter.hit("b") is None  # clients are independent
    now[0] = 0.5
    assert limiter.hit("a") == pytest.approx(0.5)
    now[0] = 1.0
    assert limiter.hit("a") is None and limiter.hit("a") is not None
    assert RateLimiter(per_minute=0, burst=1).hit("a") is None  # disabled
