"""Calibrated match levels through the real app: ``match`` on hits, ``min_match`` inside the search (paging
stays one ranking), the duplicates default, ``GET /calibration``; first uncalibrated, then calibrated while
the server runs (it reads the new calibration file without a restart)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from retrieval.calibrate import LEVELS, Calibration
from retrieval.store.keys import image_key
from tests.api.conftest import Layout, build_collection, make_settings, running, upload

PROBLEM = "application/problem+json"


@dataclass
class Env:
    client: TestClient
    data_dir: Path
    layout: Layout
    model: Any


@pytest.fixture(scope="module")
def env(layout: Layout, small_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    data_dir = tmp_path_factory.mktemp("api-match")
    build_collection(data_dir, None, small_model, [layout.library])
    with running(make_settings(data_dir, None, layout)) as client:
        yield Env(client, data_dir, layout, small_model)


@pytest.fixture(scope="module")
def calibrated(env: Env) -> Calibration:
    """A real calibration of the running server's collection, written beside its model meanwhile.

    13 photos give too few copies for the conservative bound (see retrieval.calibrate), so this one
    takes the sample's own precision (z = 0): the same scores and rule, without the small-sample margin."""
    from retrieval.calibrate_collection import calibrate_collection
    from retrieval.collection import Collection

    with Collection.open(env.data_dir, model=env.model, writable=False) as col:
        cal = calibrate_collection(col, sample=20, copies_per_photo=4, seed=1, z=0.0)
    assert cal.copy is not None and cal.near is not None and cal.similar is not None
    return cal


def key_of(path: Path) -> str:
    return str(image_key(hashlib.sha256(path.read_bytes()).hexdigest()))


def by_id(client: TestClient, image_id: str, **body: Any) -> dict[str, Any]:
    r = client.post("/api/v1/search/id", json={"image_id": image_id, **body})
    assert r.status_code == 200, r.text
    return dict(r.json())


def problem(r: Any, status: int, kind: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = dict(r.json())
    if kind is not None:
        assert body["type"].endswith(":" + kind), body
    return body


def test_schema_levels_are_the_library_levels() -> None:
    from typing import get_args

    from api.schemas import MatchLevel

    assert get_args(MatchLevel) == LEVELS


def test_uncalibrated_hits_have_no_match_and_min_match_is_refused(env: Env) -> None:
    moto = key_of(env.layout.library / "Motorbikes_image_0001.jpg")
    body = by_id(env.client, moto, k=5)
    assert body["hits"] and all(h["match"] is None for h in body["hits"])
    refused = problem(env.client.post("/api/v1/search/id", json={"image_id": moto, "min_match": "near"}), 409,
                      "not-calibrated")
    assert "run `imsearch calibrate`" in refused["detail"]
    form = problem(env.client.post("/api/v1/search/image", files=upload(env.layout.duplicate),
                                   data={"min_match": "copy"}), 409, "not-calibrated")
    assert "no calibration" in form["detail"]
    assert "imsearch calibrate" in problem(env.client.get("/api/v1/calibration"), 404, "not-calibrated")["detail"]
    dups = env.client.get("/api/v1/duplicates").json()
    assert dups["threshold"] == 0.95 and dups["threshold_source"] == "default"
    assert env.client.get("/api/v1/stats").json()["calibration"] is None


def test_unknown_levels_and_unmeasured_scores_are_refused(env: Env, calibrated: Calibration) -> None:
    moto = key_of(env.layout.library / "Motorbikes_image_0001.jpg")
    bad = problem(env.client.post("/api/v1/search/id", json={"image_id": moto, "min_match": "dupe"}), 422,
                  "validation")
    assert "min_match" in bad["detail"] and "'copy', 'near' or 'similar'" in bad["detail"]
    form = problem(env.client.post("/api/v1/search/image", files=upload(env.layout.duplicate),
                                   data={"min_match": "exact"}), 422, "validation")
    assert "min_match" in form["detail"]
    for extra in ({"box": [0, 0, 50, 50]}, {"objects": True}, {"rerank": {"aqe": 2}}):
        refused = problem(env.client.post("/api/v1/search/id", json={"image_id": moto, "min_match": "near", **extra}),
                          422)
        assert "use threshold instead" in refused["detail"], extra


def test_hits_carry_the_calibrated_level(env: Env, calibrated: Calibration) -> None:
    moto = key_of(env.layout.library / "Motorbikes_image_0001.jpg")
    body = by_id(env.client, moto, k=13, exclude_query=False)
    assert body["hits"][0]["image_id"] == moto and body["hits"][0]["match"] == "copy"  # itself
    for hit in body["hits"]:
        assert hit["match"] == calibrated.match_level(hit["score"]), hit
    assert {h["match"] for h in body["hits"]} >= {"copy", None}  # a copy and unrelated photos
    dup = key_of(env.layout.duplicate)
    assert next(h for h in body["hits"] if h["image_id"] == dup)["match"] in ("copy", "near")  # resized copy
    by_upload = env.client.post("/api/v1/search/image", files=upload(env.layout.duplicate), data={"k": "5"}).json()
    assert all(h["match"] == calibrated.match_level(h["score"]) for h in by_upload["hits"])
    boxed = by_id(env.client, moto, k=3, box=[0, 0, 100, 80])
    assert all(h["match"] is None for h in boxed["hits"])  # a box's scores were not calibrated
    cal = env.client.get("/api/v1/calibration").json()
    assert [lv["level"] for lv in cal["levels"]] == list(LEVELS)
    assert [lv["threshold"] for lv in cal["levels"]] == [calibrated.copy, calibrated.near, calibrated.similar]
    assert cal["model_fingerprint"] == env.model.fingerprint and cal["positives"] == calibrated.positives
    assert env.client.get("/api/v1/stats").json()["calibration"] == calibrated.thresholds()


@pytest.mark.parametrize("level", LEVELS)
def test_min_match_filters_inside_the_search_and_pages_stay_one_ranking(
    env: Env, calibrated: Calibration, level: str
) -> None:
    query = key_of(env.layout.library / "Motorbikes_image_0002.jpg")
    floor = calibrated.threshold(level)
    assert floor is not None
    everything = by_id(env.client, query, k=50)["hits"]
    want = [(h["image_id"], h["score"]) for h in everything if h["score"] >= floor]
    pages = [by_id(env.client, query, k=2, min_match=level)]
    while pages[-1]["next_offset"] is not None:
        pages.append(by_id(env.client, query, k=2, min_match=level, offset=pages[-1]["next_offset"]))
        assert len(pages) < 20
    got = [(h["image_id"], h["score"]) for p in pages for h in p["hits"]]
    assert got == want  # no result repeated or skipped, none below the level
    strength = {lv: i for i, lv in enumerate(LEVELS)}
    assert all(strength[h["match"]] <= strength[level] for p in pages for h in p["hits"])
    # a threshold and a level together: the stricter wins
    both = by_id(env.client, query, k=50, min_match=level, threshold=0.999)
    assert all(h["score"] >= max(0.999, floor) for h in both["hits"])


def test_min_match_on_an_upload(env: Env, calibrated: Calibration) -> None:
    r = env.client.post("/api/v1/search/image", files=upload(env.layout.duplicate),
                        data={"k": "10", "min_match": "near"})
    assert r.status_code == 200, r.text
    got = r.json()["hits"]
    assert got and all(h["match"] in ("copy", "near") for h in got)
    moto = key_of(env.layout.library / "Motorbikes_image_0001.jpg")
    assert moto in [h["image_id"] for h in got]  # the photo it was resized from


def test_duplicates_default_to_the_copy_threshold(env: Env, calibrated: Calibration) -> None:
    body = env.client.get("/api/v1/duplicates").json()
    assert body["threshold_source"] == "calibration" and body["threshold"] == calibrated.copy
    asked = env.client.get("/api/v1/duplicates", params={"threshold": calibrated.copy}).json()
    assert asked["threshold_source"] == "request" and asked["groups"] == body["groups"]
    strict = env.client.get("/api/v1/duplicates", params={"threshold": 0.9999}).json()
    assert strict["threshold"] == 0.9999 and strict["threshold_source"] == "request"
