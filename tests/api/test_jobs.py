"""Bulk index jobs through the API: start, progress, finish, re-run, one at a time, cancel and resume."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.settings import Settings
from retrieval.collection import Collection
from retrieval.store.keys import image_key
from tests.api.conftest import API_KEY, BULK_COUNT, Layout, make_settings, running

AUTH = {"X-API-Key": API_KEY}


@dataclass
class Env:
    client: TestClient
    settings: Settings
    layout: Layout

    def start(self, path: Path, **body: Any) -> dict[str, Any]:
        r = self.client.post("/api/v1/jobs", json={"path": str(path), **body}, headers=AUTH)
        assert r.status_code == 202, r.text
        assert r.headers["location"] == f"/api/v1/jobs/{r.json()['id']}"
        return dict(r.json())

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.client.get(f"/api/v1/jobs/{job_id}", headers=AUTH)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait(self, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["finished"]:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not finish in {timeout} s: {self.job(job_id)}")

    def images(self) -> int:
        return int(self.client.get("/api/v1/stats").json()["images"])


@pytest.fixture(scope="module")
def env(
    module_db_url: str | None, layout: Layout, small_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    data_dir = tmp_path_factory.mktemp("api-jobs")
    Collection.open(data_dir, db_url=module_db_url, model=small_model).close()  # empty, with the small model
    settings = make_settings(data_dir, module_db_url, layout)
    with running(settings) as client:
        yield Env(client, settings, layout)


def key_of(path: Path) -> str:
    return str(image_key(hashlib.sha256(path.read_bytes()).hexdigest()))


def test_job_indexes_a_folder_and_counts_add_up(env: Env) -> None:
    incoming = env.layout.incoming
    job = env.start(incoming, detect=True)
    assert job["status"] in ("queued", "running") and job["params"]["path"] == str(incoming)
    done = env.wait(job["id"])
    assert done["status"] == "succeeded", done
    photos = sorted(incoming.glob("*_image_*.jpg")) + sorted((incoming / "sub").glob("*.jpg"))
    assert (done["done"], done["failed"], done["skipped"]) == (len(photos), 2, 0)
    assert done["total"] == done["done"] + done["failed"] + done["skipped"]
    for path in photos:
        meta = env.client.get(f"/api/v1/images/{key_of(path)}").json()
        assert meta["files"] == [str(path)]
    secret = env.layout.outside / "secret.jpg"  # reachable only through a symlink: never indexed
    assert env.client.get(f"/api/v1/images/{key_of(secret)}").status_code == 404
    labels = {x["label"] for x in env.client.get("/api/v1/labels").json()["labels"]}
    assert {"cup", "laptop"} <= labels  # the detector ran
    listed = env.client.get("/api/v1/jobs", headers=AUTH).json()["jobs"]
    assert listed[0]["id"] == job["id"]

    again = env.wait(env.start(incoming)["id"])  # nothing changed: everything skipped
    assert (again["status"], again["done"], again["failed"], again["skipped"]) == ("succeeded", 0, 0, 6)


def test_one_job_at_a_time_cancel_and_resume(env: Env) -> None:
    before = env.images()
    first = env.start(env.layout.bulk)
    busy = env.client.post("/api/v1/jobs", json={"path": str(env.layout.incoming)}, headers=AUTH)
    assert busy.status_code == 409 and busy.json()["job_id"] == first["id"]
    cancel = env.client.post(f"/api/v1/jobs/{first['id']}/cancel", headers=AUTH)
    assert cancel.status_code == 202, cancel.text
    stopped = env.wait(first["id"])
    assert stopped["status"] == "cancelled" and stopped["done"] < BULK_COUNT
    assert env.images() == before + stopped["done"]  # what was written is there
    late = env.client.post(f"/api/v1/jobs/{first['id']}/cancel", headers=AUTH)
    assert late.status_code == 409

    second = env.wait(env.start(env.layout.bulk)["id"])  # resumes: only the rest is indexed
    assert second["status"] == "succeeded"
    assert stopped["done"] + second["done"] == BULK_COUNT
    assert second["skipped"] == stopped["done"] and second["total"] == BULK_COUNT
    assert env.images() == before + BULK_COUNT  # nothing lost, nothing twice
    for path in sorted(env.layout.bulk.iterdir())[::50]:
        assert env.client.get(f"/api/v1/images/{key_of(path)}").status_code == 200


def test_job_errors(env: Env) -> None:
    c = env.client
    assert c.post("/api/v1/jobs", json={"path": str(env.layout.bulk)}).status_code == 401
    r = c.post("/api/v1/jobs", json={"path": str(env.layout.outside)}, headers=AUTH)
    assert r.status_code == 403 and r.json()["type"].endswith("path-outside-roots")
    r = c.post("/api/v1/jobs", json={"path": str(env.layout.allowed / "escape_dir")}, headers=AUTH)
    assert r.status_code == 403 and str(env.layout.outside) not in r.json()["detail"]  # where a link goes: untold
    r = c.post("/api/v1/jobs", json={"path": str(env.layout.allowed / "no-such-folder")}, headers=AUTH)
    assert r.status_code == 404
    assert c.get("/api/v1/jobs/not-a-job", headers=AUTH).status_code == 404
    assert c.post("/api/v1/jobs/not-a-job/cancel", headers=AUTH).status_code == 404
    assert c.get("/api/v1/jobs", headers=AUTH, params={"limit": 0}).status_code == 422
