"""Bulk index jobs through the API: start, progress, finish, re-run, one at a time, cancel and resume;
the job's describing child process: same results as a thread, pauses for searches, cancel, killed."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.settings import Settings
from retrieval.collection import Collection
from retrieval.store.keys import image_key
from tests.api.conftest import API_KEY, BULK_COUNT, Layout, make_settings, running
from tests.imagefactory import gradient

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


# ---------------------------------------------------------------------------- the job's child process


def vectors(client: TestClient, space: str) -> dict[int, np.ndarray]:
    collection = client.app_state["services"].engine.collection
    ids = collection.index_ids(space)
    return dict(zip(ids.tolist(), collection.reconstruct(space, ids), strict=True))


def test_child_process_describes_as_the_server_thread(
    layout: Layout, small_model: Any, tmp_path: Path
) -> None:
    """The same photos, ids, regions and descriptors whether a job describes in a child or a thread."""
    got: dict[str, tuple[dict[str, Any], dict[int, np.ndarray], dict[int, np.ndarray]]] = {}
    for isolation in ("process", "thread"):
        data_dir = tmp_path / isolation
        Collection.open(data_dir, model=small_model).close()
        settings = make_settings(data_dir, None, layout, job_isolation=isolation)
        with running(settings) as client:
            env = Env(client, settings, layout)
            job = env.wait(env.start(layout.incoming, detect=True)["id"])
            assert job["status"] == "succeeded", job
            got[isolation] = (job, vectors(client, "image"), vectors(client, "region"))
    (child_job, child_images, child_regions), (thread_job, thread_images, thread_regions) = got.values()
    assert (child_job["done"], child_job["failed"]) == (thread_job["done"], thread_job["failed"]) == (4, 2)
    photos = sorted(layout.incoming.glob("*_image_*.jpg")) + sorted((layout.incoming / "sub").glob("*.jpg"))
    assert set(child_images) == set(thread_images) == {int(key_of(p)) for p in photos}
    assert set(child_regions) == set(thread_regions) and child_regions  # the detector ran in the child
    for mine, theirs in ((child_images, thread_images), (child_regions, thread_regions)):
        for key, vec in mine.items():
            ref = theirs[key].astype(np.float64)
            cosine = float(vec.astype(np.float64) @ ref / (np.linalg.norm(vec) * np.linalg.norm(ref)))
            assert cosine >= 0.9999, (key, cosine)


def test_the_gate_in_shared_memory_follows_the_gate_rule() -> None:
    """What a child reads (:class:`SharedPause`) waits like the server's gate: while searches run,
    at most ``max_wait_s`` in a row, then ``min_run_s`` without pausing."""
    from api.compute import ForegroundGate
    from retrieval.ingest.child import SharedPause

    assert ForegroundGate(max_wait_s=0.0).for_child() is None  # pausing turned off
    gate = ForegroundGate(max_wait_s=30.0, min_run_s=0.25)
    spec = gate.for_child()
    again = gate.for_child()
    assert spec is not None and again is not None and spec.busy is again.busy  # one shared count
    pause = SharedPause(spec)
    pause.pause_point()
    assert pause.pauses == 0  # nothing in flight
    gate.enter()
    assert spec.busy.value == 1
    resumed = threading.Event()

    def background() -> None:
        pause.pause_point()
        resumed.set()

    job = threading.Thread(target=background)
    job.start()
    assert not resumed.wait(0.3)  # waits while the search is in flight ...
    gate.leave()
    assert resumed.wait(10) and spec.busy.value == 0  # ... and goes on when it ends
    job.join()
    assert pause.pauses == 1 and pause.waited_s >= 0.3

    capped = SharedPause(replace(spec, max_wait_s=0.1, min_run_s=30.0))
    gate.enter()  # a search that never ends
    try:
        start = time.monotonic()
        capped.pause_point()
        assert time.monotonic() - start >= 0.1  # waited its maximum, then went on
        for _ in range(100):
            capped.pause_point()  # and runs min_run_s without pausing
        assert capped.pauses == 1
    finally:
        gate.leave()


CHILD_COUNT = 48  # images of the child-process jobs: a few commits (every 2 x job_batch_size)


@pytest.fixture(scope="module")
def child_env(layout: Layout, small_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A fresh collection; jobs in a child process at nice +5 that waits up to 60 s for searches;
    ``layout.allowed / "jobs-child"``: CHILD_COUNT small generated images."""
    folder = layout.allowed / "jobs-child"
    folder.mkdir(exist_ok=True)
    for i in range(CHILD_COUNT):
        pixels = gradient(64, 48, seed=1000 + i)
        pixels[:, i % 64, :] = (i * 53) % 256  # a distinct column: distinct content
        Image.fromarray(pixels).save(folder / f"child_{i:03d}.png")
    data_dir = tmp_path_factory.mktemp("api-jobs-child")
    Collection.open(data_dir, model=small_model).close()
    settings = make_settings(data_dir, None, layout, job_isolation="process", job_nice=5, job_yield_max_ms=60_000)
    with running(settings) as client:
        yield Env(client, settings, layout)


def child_of(env: Env, timeout: float = 120.0) -> int:
    """The running job's describing process, once it exists."""
    jobs = env.client.app_state["services"].jobs
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = jobs.child_pid()
        if pid is not None:
            return int(pid)
        time.sleep(0.02)
    raise AssertionError("the job's describing process did not start")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_child_pauses_for_searches_and_cancel_stops_it(child_env: Env) -> None:
    env = child_env
    gate = env.client.app_state["services"].model.gate
    before = env.images()
    gate.enter()  # a search in flight, as far as the job can tell
    try:
        job = env.start(env.layout.allowed / "jobs-child")
        pid = child_of(env)
        server = os.getpriority(os.PRIO_PROCESS, os.getpid())
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, server + 5)  # job_nice, once
        time.sleep(1.5)
        assert env.job(job["id"])["done"] == 0  # its network waits at its first layer
        assert env.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=AUTH).status_code == 202
        stopped = env.wait(job["id"], timeout=30)
    finally:
        gate.leave()
    assert stopped["status"] == "cancelled", stopped
    assert gone(pid) and env.client.app_state["services"].jobs.child_pid() is None
    assert env.images() == before + stopped["done"]


def test_killed_child_fails_the_job_and_a_rerun_finishes(child_env: Env) -> None:
    env = child_env
    folder = env.layout.allowed / "jobs-child"
    before = env.images()
    gate = env.client.app_state["services"].model.gate
    gate.enter()  # a search in flight: the child's network waits at its next layer
    try:
        job = env.start(folder)
        pid = child_of(env)
        deadline = time.monotonic() + 120
        while env.job(job["id"])["done"] < 8 and time.monotonic() < deadline:
            gate.leave()  # a few milliseconds of work at a time (the images are tiny: unpaused, the job
            time.sleep(0.005)  # would be done before a poll could see it half-way)
            gate.enter()
            time.sleep(0.05)  # what was described meanwhile is committed
        os.kill(pid, signal.SIGKILL)  # while it waits: half-way, whatever the machine's speed
    finally:
        gate.leave()
    failed = env.wait(job["id"])
    assert failed["status"] == "failed", failed
    assert f"describing process (pid {pid}) was killed by signal SIGKILL" in failed["message"]
    assert "start the job again" in failed["message"]
    assert 8 <= failed["done"] < CHILD_COUNT
    assert env.images() == before + failed["done"]  # what it described before it died is written

    again = env.wait(env.start(folder)["id"])
    assert again["status"] == "succeeded", again
    assert again["total"] == CHILD_COUNT and again["skipped"] + again["done"] == CHILD_COUNT
    assert env.images() == before + failed["done"] + again["done"]  # nothing lost, nothing twice
    collection = env.client.app_state["services"].engine.collection
    assert collection.count("image") == env.images()
    for path in sorted(folder.iterdir()):
        assert env.client.get(f"/api/v1/images/{key_of(path)}").status_code == 200, path
