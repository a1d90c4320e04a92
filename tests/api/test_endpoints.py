"""Every endpoint through the real app (lifespan, FAISS, SQL catalog), on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.settings import Settings
from retrieval.store.keys import image_key
from tests.api.conftest import API_KEY, Layout, build_collection, make_settings, running, upload

AUTH = {"X-API-Key": API_KEY}
PROBLEM = "application/problem+json"


def key_of(path: Path) -> int:
    return image_key(hashlib.sha256(path.read_bytes()).hexdigest())


@dataclass
class Env:
    client: TestClient
    settings: Settings
    layout: Layout

    def photo(self, name: str) -> Path:
        return self.layout.library / name

    def meta(self, image_id: int | str) -> dict[str, Any]:
        r = self.client.get(f"/api/v1/images/{image_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def search_file(self, path: Path, **form: Any) -> dict[str, Any]:
        r = self.client.post("/api/v1/search/image", files=upload(path), data=form)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def search_id(self, image_id: int | str, **body: Any) -> dict[str, Any]:
        r = self.client.post("/api/v1/search/id", json={"image_id": str(image_id), **body})
        assert r.status_code == 200, r.text
        return dict(r.json())


@pytest.fixture(scope="module")
def env(
    module_db_url: str | None, layout: Layout, small_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    data_dir = tmp_path_factory.mktemp("api-data")
    build_collection(data_dir, module_db_url, small_model, [layout.library])
    settings = make_settings(data_dir, module_db_url, layout)
    with running(settings) as client:
        yield Env(client, settings, layout)


def library_labels(env: Env) -> dict[str, dict[str, tuple[float, float]]]:
    """id -> label -> (best score, largest area), read back per image."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for path in env.layout.library_photos():
        meta = env.meta(key_of(path))
        labels: dict[str, tuple[float, float]] = {}
        for lab in meta["labels"]:
            old = labels.get(lab["label"], (0.0, 0.0))
            labels[lab["label"]] = (max(old[0], lab["score"]), max(old[1], lab["area"]))
        out[meta["id"]] = labels
    return out


# ---------------------------------------------------------------------------- collection views


def test_health_and_stats(env: Env) -> None:
    n = len(env.layout.library_photos())
    health = env.client.get("/api/v1/health").json()
    assert health["status"] == "ok" and health["images"] >= n
    stats = env.client.get("/api/v1/stats").json()
    assert stats["images"] >= n and stats["vectors"]["image"] == stats["images"]
    assert stats["dim"] == 1280 and "efficientnet_lite0" in stats["model"] and "max side 128" in stats["model"]
    assert stats["index"]["image"]["size"] == stats["images"]
    assert stats["database"] == ("sqlite" if env.settings.db is None else "postgresql")
    assert stats["regions"] > 0 and stats["read_only"] is False
    assert stats["model_engine"] == "onnxruntime"  # model_engine=auto on CPU with the [onnx] extra installed


def test_labels_counts_match_images(env: Env) -> None:
    truth = library_labels(env)
    body = env.client.get("/api/v1/labels").json()
    counts = {x["label"]: x["count"] for x in body["labels"]}
    for label in ("person", "motorcycle", "laptop", "bird"):
        assert counts[label] == sum(1 for labels in truth.values() if label in labels)
    assert counts["motorcycle"] == 4  # three photos and the near-duplicate
    strict = {x["label"]: x["count"] for x in env.client.get("/api/v1/labels?min_score=0.8").json()["labels"]}
    for label, n in strict.items():
        assert n == sum(1 for labels in truth.values() if label in labels and labels[label][0] >= 0.8)
    assert env.client.get("/api/v1/labels?min_score=2").status_code == 422


def test_duplicates_finds_the_near_duplicate(env: Env) -> None:
    body = env.client.get("/api/v1/duplicates", params={"threshold": 0.9}).json()
    pair = {str(key_of(env.photo("Motorbikes_image_0001.jpg"))), str(key_of(env.layout.duplicate))}
    groups = [set(g["image_ids"]) for g in body["groups"]]
    assert any(pair <= g for g in groups), body
    assert body["total_groups"] >= 1 and all(g["min_score"] >= 0.9 for g in body["groups"])
    assert env.client.get("/api/v1/duplicates", params={"threshold": 0}).status_code == 422


# ---------------------------------------------------------------------------- search


def test_search_by_upload_finds_itself_first(env: Env) -> None:
    path = env.photo("elephant_image_0002.jpg")
    body = env.search_file(path, k=5)
    hits = body["hits"]
    assert len(hits) == 5 and body["k"] == 5 and body["query"] == {"image_id": None, "box": None}
    assert hits[0]["image_id"] == str(key_of(path)) and hits[0]["score"] > 0.999
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert set(body["timings"]) == {"describe_ms", "search_ms", "metadata_ms"}
    assert hits[0]["thumbnail_url"] == f"/api/v1/images/{hits[0]['image_id']}/thumbnail"
    assert any(lab["label"] == "elephant" for lab in hits[0]["labels"])


def test_search_threshold(env: Env) -> None:
    hits = env.search_file(env.photo("laptop_image_0001.jpg"), k=20, threshold=0.999)["hits"]
    assert [h["image_id"] for h in hits] == [str(key_of(env.photo("laptop_image_0001.jpg")))]


def test_label_filters_any_all_none(env: Env) -> None:
    truth = library_labels(env)
    query = env.photo("Faces_image_0001.jpg")
    hits = env.search_file(query, k=20, labels_any=["motorcycle"])["hits"]
    assert {h["image_id"] for h in hits} == {i for i, labels in truth.items() if "motorcycle" in labels}
    hits = env.search_file(query, k=20, labels_all=["umbrella", "person"])["hits"]
    assert {h["image_id"] for h in hits} == {i for i, labels in truth.items() if {"umbrella", "person"} <= set(labels)}
    hits = env.search_file(query, k=50, labels_none=["person"])["hits"]
    assert hits and all("person" not in [lab["label"] for lab in h["labels"]] for h in hits)
    expected = {i for i, labels in truth.items() if "person" in labels and labels["person"][1] >= 0.3}
    hits = env.search_file(query, k=20, labels_any=["person"], min_area=0.3)["hits"]
    assert {h["image_id"] for h in hits} == expected
    by_id = env.search_id(key_of(query), k=20, filters={"any": ["motorcycle"], "min_score": 0.5})["hits"]
    assert {h["image_id"] for h in by_id} == {
        i for i, labels in truth.items() if "motorcycle" in labels and labels["motorcycle"][0] >= 0.5
    }


def test_search_by_id_excludes_itself_unless_asked(env: Env) -> None:
    image_id = key_of(env.photo("Motorbikes_image_0001.jpg"))
    body = env.search_id(image_id, k=3)
    assert body["query"]["image_id"] == str(image_id)
    assert str(image_id) not in [h["image_id"] for h in body["hits"]]
    assert body["hits"][0]["image_id"] == str(key_of(env.layout.duplicate))  # its near-duplicate
    with_self = env.search_id(image_id, k=3, exclude_query=False)["hits"]
    assert with_self[0]["image_id"] == str(image_id) and with_self[0]["score"] > 0.999
    assert env.client.post("/api/v1/search/id", json={"image_id": image_id, "k": 3}).status_code == 200  # int too
    missing = env.client.post("/api/v1/search/id", json={"image_id": 12345, "k": 3})
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM
    assert "12345" in missing.json()["detail"]


def test_box_and_object_search(env: Env) -> None:
    path = env.photo("elephant_image_0002.jpg")  # the elephant covers a third of the photo
    meta = env.meta(key_of(path))
    region = next(r for r in meta["regions"] if r["label"] == "elephant")
    box = [round(v) for v in region["box"]]
    body = env.search_file(path, k=5, box=",".join(map(str, box)), objects="true")
    assert body["query"]["box"] == pytest.approx(box, abs=1.0)
    top = body["hits"][0]
    assert top["image_id"] == meta["id"] and top["region_label"] == "elephant" and top["score"] > 0.99
    assert top["box"] == pytest.approx(region["box"], abs=0.01)
    plain = env.search_file(path, k=5, box=",".join(map(str, box)))["hits"]
    assert all(h["box"] is None for h in plain)  # whole images only without objects
    by_id = env.search_id(meta["id"], k=5, box=box, objects=True, exclude_query=False)
    assert by_id["query"]["box"] == pytest.approx(box, abs=1.0)
    assert by_id["hits"][0]["image_id"] == meta["id"]
    outside = [meta["width"] + 10, 0, meta["width"] + 50, 40]
    r = env.client.post("/api/v1/search/id", json={"image_id": meta["id"], "box": outside})
    assert r.status_code == 422 and "box" in r.json()["detail"]
    assert env.client.post("/api/v1/search/id", json={"image_id": meta["id"], "box": [5, 5, 2, 2]}).status_code == 422


def test_rerank_options(env: Env) -> None:
    path = env.photo("rooster_image_0003.jpg")
    plain = env.search_file(path, k=6)["hits"]
    for form in ({"aqe": 3}, {"dba": 3}, {"aqe": 2, "dba": 2, "alpha": 0}):
        hits = env.search_file(path, k=6, **form)["hits"]
        assert len(hits) == 6 and hits[0]["image_id"] == plain[0]["image_id"]
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert env.search_id(plain[0]["image_id"], k=4, rerank={"aqe": 2, "dba": 2})["hits"]


def test_search_limits_and_validation(env: Env) -> None:
    path = env.photo("laptop_image_0002.jpg")
    r = env.client.post("/api/v1/search/image", files=upload(path), data={"k": "500"})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM and "limit of 200" in r.json()["detail"]
    r = env.client.post("/api/v1/search/image", files=upload(path), data={"k": "0"})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"][-1] == "k"
    r = env.client.post("/api/v1/search/image", files=upload(path), data={"box": "1,2,3"})
    assert r.status_code == 422 and "box" in r.json()["detail"]
    r = env.client.post("/api/v1/search/image", data={"k": "3"})
    assert r.status_code == 422 and "file" in r.json()["detail"]
    r = env.client.post("/api/v1/search/id", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["type"].endswith("validation")
    r = env.client.post("/api/v1/search/id", json={"image_id": -1})
    assert r.status_code == 422


# ---------------------------------------------------------------------------- images


def test_image_metadata_original_and_thumbnail(env: Env) -> None:
    path = env.photo("schooner_image_0003.jpg")
    image_id = key_of(path)
    meta = env.meta(image_id)
    with Image.open(path) as im:
        assert (meta["width"], meta["height"]) == im.size
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and meta["files"] == [str(path)]
    assert meta["stored"] is False and meta["format"] == "JPEG"
    original = env.client.get(meta["original_url"])
    assert original.status_code == 200 and original.content == path.read_bytes()
    assert original.headers["content-type"] == "image/jpeg"
    thumb = env.client.get(meta["thumbnail_url"], params={"size": 100})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb.content)) as im:
        assert max(im.size) == min(128, max(meta["width"], meta["height"]))  # 100 snaps up to 128
    cached = Path(env.settings.thumbnails_dir) / f"{image_id}-128.jpg"
    assert cached.is_file() and cached.read_bytes() == thumb.content
    mtime = cached.stat().st_mtime_ns
    assert env.client.get(meta["thumbnail_url"], params={"size": 128}).content == thumb.content
    assert cached.stat().st_mtime_ns == mtime  # served from the cache
    for url in (f"/api/v1/images/{12345}", f"/api/v1/images/{12345}/thumbnail", f"/api/v1/images/{12345}/original"):
        r = env.client.get(url)
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    assert env.client.get(f"/api/v1/images/{2**63}").status_code == 422
    assert env.client.get("/api/v1/images/abc").status_code == 422


def test_upload_add_search_delete(env: Env) -> None:
    path = env.layout.extra / "crab_image_0001.jpg"
    image_id = str(key_of(path))
    r = env.client.post("/api/v1/images", files=upload(path), headers=AUTH)
    assert r.status_code == 201, r.text
    meta = r.json()
    assert meta["id"] == image_id and meta["stored"] is True and meta["path"] is None
    stored = Path(env.settings.data_dir).resolve() / "uploads" / meta["sha256"][:2] / f"{meta['sha256']}.jpg"
    assert stored.read_bytes() == path.read_bytes()
    assert env.client.get(meta["original_url"]).content == path.read_bytes()
    again = env.client.post("/api/v1/images", files=upload(path), headers=AUTH)
    assert again.status_code == 200 and again.json()["id"] == image_id
    assert env.search_file(path, k=1)["hits"][0]["image_id"] == image_id
    assert env.client.get(meta["thumbnail_url"]).status_code == 200
    r = env.client.delete(f"/api/v1/images/{image_id}", headers=AUTH)
    assert r.status_code == 204
    assert env.client.get(f"/api/v1/images/{image_id}").status_code == 404
    assert env.client.get(meta["thumbnail_url"]).status_code == 404
    assert not stored.exists() and not list(Path(env.settings.thumbnails_dir).glob(f"{image_id}-*"))
    assert image_id not in [h["image_id"] for h in env.search_file(path, k=5)["hits"]]
    assert env.client.delete(f"/api/v1/images/{image_id}", headers=AUTH).status_code == 404


def test_add_server_side_path(env: Env) -> None:
    path = env.layout.extra / "wrench_image_0001.jpg"
    r = env.client.post("/api/v1/images/from-path", json={"path": str(path)}, headers=AUTH)
    assert r.status_code == 201, r.text
    meta = r.json()
    assert meta["path"] == str(path) and meta["files"] == [str(path)] and meta["stored"] is False
    again = env.client.post("/api/v1/images/from-path", json={"path": str(path)}, headers=AUTH)
    assert again.status_code == 200 and again.json()["id"] == meta["id"]
    assert env.search_file(path, k=1)["hits"][0]["image_id"] == meta["id"]
    missing = env.client.post(
        "/api/v1/images/from-path", json={"path": str(env.layout.extra / "nope.jpg")}, headers=AUTH
    )
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM
    assert env.client.delete(f"/api/v1/images/{meta['id']}", headers=AUTH).status_code == 204
    assert path.is_file()  # deleting from the collection never deletes the user's file
