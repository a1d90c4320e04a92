"""``GET /api/v1/images`` (browse pages, facets) and ``GET /api/v1/failures`` through the real app,
on SQLite and PostgreSQL (``module_db_url``)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from retrieval.store.keys import image_key
from tests.api.conftest import API_KEY, Layout, build_collection, make_settings, running

AUTH = {"X-API-Key": API_KEY}


def key_of(path: Path) -> str:
    return str(image_key(hashlib.sha256(path.read_bytes()).hexdigest()))


@pytest.fixture(scope="module")
def client(
    module_db_url: str | None, layout: Layout, small_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    data_dir = tmp_path_factory.mktemp("api-browse")
    build_collection(data_dir, module_db_url, small_model, [layout.library])
    with running(make_settings(data_dir, module_db_url, layout)) as c:
        yield c


def browse(client: TestClient, **params: Any) -> dict[str, Any]:
    r = client.get("/api/v1/images", params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_pages_sorts_and_urls(client: TestClient, layout: Layout) -> None:
    photos = layout.library_photos()
    by_path = browse(client, sort="path", limit=200)
    assert [x["id"] for x in by_path["items"]] == [key_of(p) for p in photos]  # one folder: byte order
    assert by_path["total"] == len(photos) and by_path["next_offset"] is None and by_path["facets"] is None
    item = by_path["items"][0]
    assert item["path"] == str(photos[0]) and item["thumbnail_url"] == f"/api/v1/images/{item['id']}/thumbnail"
    assert client.get(item["thumbnail_url"]).status_code == 200

    newest = browse(client, limit=200)  # -added by default
    oldest = browse(client, sort="added", limit=200)
    assert newest["sort"] == "-added" and [x["id"] for x in newest["items"]] == [x["id"] for x in oldest["items"]][::-1]
    taken = [x["exif_time"] or x["added_at"] for x in browse(client, sort="exif_time", limit=200)["items"]]
    assert taken == sorted(taken)

    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = browse(client, sort="path", limit=5, offset=offset)
        assert page["offset"] == offset and len(page["items"]) <= 5
        seen += [x["id"] for x in page["items"]]
        offset = page["next_offset"]
    assert seen == [x["id"] for x in by_path["items"]]
    assert browse(client, offset=1000)["items"] == []


def test_labels_prefix_and_facets(client: TestClient, layout: Layout) -> None:
    everything = browse(client, facets="true", limit=200)
    facets = {f["label"]: f["count"] for f in everything["facets"]}
    labels = client.get("/api/v1/labels").json()["labels"]
    assert facets == {x["label"]: x["count"] for x in labels}  # no filter: the same counts as /labels

    people = browse(client, label="person", facets="true", limit=200)
    assert people["total"] == facets["person"] and all("person" in x["labels"] for x in people["items"])
    both = browse(client, label=["person", "motorcycle"], limit=200)  # every label must match
    assert both["total"] >= 1 and all({"person", "motorcycle"} <= set(x["labels"]) for x in both["items"])
    assert both["total"] < people["total"]
    assert {f["label"]: f["count"] for f in people["facets"]}["person"] == people["total"]
    assert browse(client, label="PERSON", limit=200)["total"] == people["total"]  # names are lower-cased

    prefix = str(layout.library / "Motorbikes_")
    bikes = browse(client, prefix=prefix, sort="path", facets="true")
    names = sorted(p.name for p in layout.library_photos() if p.name.startswith("Motorbikes_"))
    assert [Path(x["path"]).name for x in bikes["items"]] == names
    assert {f["label"] for f in bikes["facets"]} >= {"motorcycle"}
    assert browse(client, prefix="/nowhere/")["total"] == 0


def test_bad_requests_are_422_problems(client: TestClient) -> None:
    for params in ({"sort": "size"}, {"limit": 201}, {"limit": 0}, {"offset": -1}, {"prefix": "/a\x00b"},
                   {"label": ""}, {"min_score": 2}):
        r = client.get("/api/v1/images", params=params)
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), params
    assert client.get("/api/v1/failures").status_code == 422  # the prefix is required


def test_failures_under_a_job_folder(client: TestClient, layout: Layout) -> None:
    job = client.post("/api/v1/jobs", json={"path": str(layout.incoming), "detect": False}, headers=AUTH).json()
    for _ in range(600):
        if client.get(f"/api/v1/jobs/{job['id']}", headers=AUTH).json()["finished"]:
            break
        time.sleep(0.2)
    found = client.get("/api/v1/failures", params={"prefix": str(layout.incoming)}).json()
    assert found["prefix"] == str(layout.incoming)
    assert sorted(Path(f["path"]).name for f in found["failures"]) == ["text.jpg", "truncated.jpg"]
    assert all(f["reason"] for f in found["failures"])
    assert client.get("/api/v1/failures", params={"prefix": str(layout.library)}).json()["failures"] == []
