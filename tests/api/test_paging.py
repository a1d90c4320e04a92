"""Paging through the API: ``offset`` in, ``offset`` + ``next_offset`` out; pages = one big search."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from retrieval.store.keys import image_key
from tests.api.conftest import API_KEY, Layout, build_collection, make_settings, running, upload

AUTH = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def client(
    module_db_url: str | None, layout: Layout, small_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    data_dir = tmp_path_factory.mktemp("api-paging")
    build_collection(data_dir, module_db_url, small_model, [layout.library, layout.extra])
    with running(make_settings(data_dir, module_db_url, layout)) as c:
        yield c


def key_of(path: Path) -> str:
    return str(image_key(hashlib.sha256(path.read_bytes()).hexdigest()))


def by_id(client: TestClient, image_id: str, **body: Any) -> dict[str, Any]:
    r = client.post("/api/v1/search/id", json={"image_id": image_id, **body})
    assert r.status_code == 200, r.text
    return dict(r.json())


def by_image(client: TestClient, path: Path, **form: Any) -> dict[str, Any]:
    r = client.post("/api/v1/search/image", files=upload(path), data=form)
    assert r.status_code == 200, r.text
    return dict(r.json())


def hits(page: dict[str, Any]) -> list[tuple[str, float]]:
    return [(h["image_id"], h["score"]) for h in page["hits"]]


def follow(search: Any, k: int) -> list[dict[str, Any]]:
    """Every page of one search, following next_offset until it is null."""
    pages = [search(k=k, offset=0)]
    while pages[-1]["next_offset"] is not None:
        assert pages[-1]["next_offset"] == pages[-1]["offset"] + len(pages[-1]["hits"])
        pages.append(search(k=k, offset=pages[-1]["next_offset"]))
        assert len(pages) < 50
    return pages


@pytest.mark.parametrize(
    "filters",
    [{}, {"none": ["person"]}, {"any": ["person", "motorcycle", "bird"]}],
    ids=["unfiltered", "no-person", "any-of"],
)
def test_pages_by_id_concatenated_equal_one_big_search(
    client: TestClient, layout: Layout, filters: dict[str, Any]
) -> None:
    query = key_of(layout.library_photos()[2])
    big = by_id(client, query, k=200, filters=filters)
    assert big["offset"] == 0 and big["next_offset"] is None
    pages = follow(lambda **kw: by_id(client, query, filters=filters, **kw), k=3)
    assert [p["offset"] for p in pages] == list(range(0, 3 * len(pages), 3))
    assert [h for p in pages for h in hits(p)] == hits(big)
    assert query not in {i for i, _ in hits(big)}  # exclude_query holds on every page
    if filters:
        assert len(pages[0]["hits"]) >= 2 and len(hits(big)) < len(hits(by_id(client, query, k=200)))
        want, refuse = set(filters.get("any", [])), set(filters.get("none", []))
        for hit in (h for p in pages for h in p["hits"]):
            labels = {lab["label"] for lab in hit["labels"]}
            assert not labels & refuse and (not want or labels & want)


def test_pages_by_upload_concatenated_equal_one_big_search(client: TestClient, layout: Layout) -> None:
    photo = layout.library_photos()[5]
    big = by_image(client, photo, k=12)
    assert big["next_offset"] == 12  # the collection holds more than 12 images
    pages = [by_image(client, photo, k=4, offset=offset) for offset in (0, 4, 8)]
    assert [p["next_offset"] for p in pages] == [4, 8, 12]
    assert [h for p in pages for h in hits(p)] == hits(big)
    assert hits(big)[0][0] == key_of(photo)


def test_past_the_end_and_limits(client: TestClient, layout: Layout) -> None:
    query = key_of(layout.library_photos()[0])
    total = len(hits(by_id(client, query, k=200)))
    tail = by_id(client, query, k=5, offset=total - 2)
    assert len(tail["hits"]) == 2 and tail["next_offset"] is None and tail["offset"] == total - 2
    empty = by_id(client, query, k=5, offset=total + 10)
    assert empty["hits"] == [] and empty["next_offset"] is None
    r = client.post("/api/v1/search/id", json={"image_id": query, "k": 10, "offset": 995})
    assert r.status_code == 422 and "offset + k" in r.json()["detail"], r.text
    r = client.post("/api/v1/search/id", json={"image_id": query, "offset": -1})
    assert r.status_code == 422, r.text
    r = client.post("/api/v1/search/image", files=upload(layout.library_photos()[0]), data={"offset": "x"})
    assert r.status_code == 422, r.text
