"""Odd, broken and oversized uploads: problem JSON with 413/415/422, never a 500."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.api.conftest import API_KEY, Layout, build_collection, make_settings, random_noise_png, running, upload
from tests.imagefactory import odd_files

PROBLEM = "application/problem+json"
AUTH = {"X-API-Key": API_KEY}
MAX_UPLOAD = 256 * 1024
MAX_PIXELS = 150_000
# what each undecodable file of imagefactory.odd_files must answer
BROKEN = {"empty.jpg": 422, "truncated.jpg": 422, "text.jpg": 415, "bomb.png": 422}


@pytest.fixture(scope="module")
def client(layout: Layout, small_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    data_dir = tmp_path_factory.mktemp("api-uploads")
    build_collection(data_dir, None, small_model, layout.library_photos()[:4])
    settings = make_settings(data_dir, None, layout, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS, max_k=50)
    with running(settings) as c:
        yield c


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, bool]]:
    return odd_files(tmp_path_factory.mktemp("odd"))


def problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = dict(r.json())
    assert body["status"] == status and body["detail"] and body["type"].startswith(("tag:imsearch", "about:blank"))
    return body


def test_odd_uploads_search_or_fail_cleanly(client: Any, odd: dict[str, tuple[bytes, bool]]) -> None:
    assert set(BROKEN) == {name for name, (_, ok) in odd.items() if not ok}
    for name, (data, decodable) in odd.items():
        r = client.post("/api/v1/search/image", files=upload(name, data, "application/octet-stream"), data={"k": 2})
        if decodable:
            assert r.status_code == 200, (name, r.text)
            assert len(r.json()["hits"]) == 2
        else:
            body = problem(r, BROKEN[name])
            assert name in body["detail"], body


def test_odd_files_added_or_refused(client: Any, odd: dict[str, tuple[bytes, bool]], tmp_path: Path) -> None:
    uploads = Path(client.app.state.settings.uploads_dir)
    for name, (data, decodable) in odd.items():
        before = sorted(uploads.rglob("*")) if uploads.exists() else []
        r = client.post("/api/v1/images", files=upload(name, data), headers=AUTH)
        if decodable:
            assert r.status_code in (200, 201), (name, r.text)
            meta = r.json()
            assert client.get(meta["original_url"]).content == data
            assert client.get(meta["thumbnail_url"]).status_code == 200
        else:
            problem(r, BROKEN[name])
            after = sorted(uploads.rglob("*")) if uploads.exists() else []
            assert after == before, f"{name}: a refused upload left files behind"


def test_rotated_upload_has_the_turned_size(client: Any, odd: dict[str, tuple[bytes, bool]]) -> None:
    r = client.post("/api/v1/images", files=upload("rotated.jpg", odd["rotated.jpg"][0]), headers=AUTH)
    assert r.status_code in (200, 201)
    meta = r.json()
    assert (meta["width"], meta["height"]) == (64, 96)  # EXIF orientation 6 turns 96x64
    with Image.open(io.BytesIO(client.get(meta["thumbnail_url"]).content)) as im:
        assert im.size[1] > im.size[0]


def test_size_and_pixel_limits(client: Any) -> None:
    big = random_noise_png(400)  # ~480 KB: refused from its Content-Length before it is read
    assert len(big) > MAX_UPLOAD + 64 * 1024
    body = problem(client.post("/api/v1/search/image", files=upload("big.png", big)), 413)
    assert str(MAX_UPLOAD + 64 * 1024) in body["detail"]
    medium = random_noise_png(300)  # ~270 KB: passes the header check, refused while read
    assert MAX_UPLOAD < len(medium) <= MAX_UPLOAD + 64 * 1024
    problem(client.post("/api/v1/search/image", files=upload("medium.png", medium)), 413)
    problem(client.post("/api/v1/images", files=upload("medium.png", medium), headers=AUTH), 413)
    # chunked (no Content-Length): bounded while read
    boundary = "imsearchboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="m.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    chunks = iter([head, medium, f"\r\n--{boundary}--\r\n".encode()])
    r = client.post(
        "/api/v1/search/image", content=chunks, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    problem(r, 413)
    wide = io.BytesIO()
    Image.new("RGB", (500, 400), (90, 120, 200)).save(wide, format="JPEG")
    body = problem(client.post("/api/v1/search/image", files=upload("wide.jpg", wide.getvalue())), 422)
    assert body["type"].endswith("image-too-large") and "200000" in body["detail"]
    assert problem(client.post("/api/v1/search/id", json={"image_id": 1, "k": 51}), 422)["type"].endswith("k-too-large")


def test_validation_and_routing_errors_are_problems(client: Any) -> None:
    body = problem(client.post("/api/v1/search/id", json={"image_id": 1, "colour": "red"}), 422)
    assert body["errors"][0]["loc"] == ["body", "colour"]
    body = problem(client.post("/api/v1/search/id", json={"image_id": "12x"}), 422)
    assert "image_id" in body["detail"]
    problem(client.get("/api/v1/no-such-thing"), 404)
    r = client.put("/api/v1/labels")
    problem(r, 405)
    assert "GET" in r.headers["allow"]
    problem(client.post("/api/v1/search/id", content=b"x", headers={"content-length": "abc"}), 400)
