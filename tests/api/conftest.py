"""Fixtures of the API tests: real photos in an allowed root, real collections, the real app.

Layout (one per session, under a temporary folder)::

    allowed/                 the server's only allowed root
      library/               12 real photos + a near-duplicate of one: the indexed collection
      incoming/              3 photos, sub/1 photo, 2 broken files, a symlink out: index jobs
      extra/                 photos added one by one (upload or server-side path)
      bulk/                  300 small generated images: a job long enough to cancel
      escape.jpg -> ../outside/secret.jpg       (a symlink out of the root)
      escape_dir -> ../outside                  (a folder symlink out of the root)
    outside/secret.jpg       never readable through the API

Collections are built with the real indexer pipeline (real FAISS, real SQLite or
PostgreSQL, the yolox_nano detector) and a small descriptor model (efficientnet_lite0,
max side 128, one scale) so the suite stays fast; the app then uses the collection's model.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from psycopg import sql

from api.app import create_app
from api.settings import Settings
from retrieval.collection import Collection
from retrieval.ingest import IndexOptions, IngestSettings, LocalIngest
from retrieval.models.descriptor import DescriptorModel
from tests.imagefactory import CALTECH, gradient, truncated_jpeg

API_KEY = "test-key-0123456789"
OTHER_KEY = "another-key-abcdefgh"
MODEL_DIR = Path(__file__).resolve().parents[3] / "shared" / "models"

LIBRARY = [
    "Faces/image_0001.jpg",  # person
    "Faces/image_0003.jpg",  # person
    "Motorbikes/image_0001.jpg",  # motorcycle (and its near-duplicate below)
    "Motorbikes/image_0002.jpg",
    "Motorbikes/image_0003.jpg",
    "laptop/image_0001.jpg",
    "laptop/image_0002.jpg",
    "elephant/image_0002.jpg",
    "umbrella/image_0002.jpg",  # umbrella + person
    "rooster/image_0003.jpg",  # bird
    "pigeon/image_0003.jpg",  # bird
    "schooner/image_0003.jpg",  # boat
]
INCOMING = ["laptop/image_0003.jpg", "cup/image_0002.jpg", "chair/image_0003.jpg"]
INCOMING_SUB = ["ketch/image_0001.jpg"]
EXTRA = ["crab/image_0001.jpg", "wrench/image_0001.jpg", "lotus/image_0001.jpg", "pagoda/image_0001.jpg"]
BULK_COUNT = 300


@dataclass(frozen=True)
class Layout:
    root: Path
    allowed: Path
    library: Path
    incoming: Path
    extra: Path
    bulk: Path
    outside: Path
    duplicate: Path  # near-duplicate of library/Motorbikes_image_0001.jpg

    def library_photos(self) -> list[Path]:
        return sorted(p for p in self.library.iterdir() if p.suffix == ".jpg")


def _flat(rel: str) -> str:
    return rel.replace("/", "_")


def _copy(rels: list[str], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for rel in rels:
        shutil.copyfile(CALTECH / rel, folder / _flat(rel))


def _bulk(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(BULK_COUNT):
        pixels = gradient(64, 48, seed=i)
        pixels[i % 48, :, :] = (i * 37) % 256  # a distinct line: distinct content
        Image.fromarray(pixels).save(folder / f"gen_{i:04d}.png")


@pytest.fixture(scope="session")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    root = tmp_path_factory.mktemp("api-photos")
    allowed, outside = root / "allowed", root / "outside"
    lay = Layout(
        root, allowed, allowed / "library", allowed / "incoming", allowed / "extra", allowed / "bulk", outside,
        allowed / "library" / "dup_Motorbikes_image_0001.jpg",
    )
    _copy(LIBRARY, lay.library)
    with Image.open(CALTECH / "Motorbikes/image_0001.jpg") as im:
        w, h = im.size
        im.convert("RGB").resize((w * 9 // 10, h * 9 // 10), Image.Resampling.LANCZOS).save(lay.duplicate, quality=80)
    _copy(INCOMING, lay.incoming)
    _copy(INCOMING_SUB, lay.incoming / "sub")
    (lay.incoming / "truncated.jpg").write_bytes(truncated_jpeg(gradient(96, 64)))
    (lay.incoming / "text.jpg").write_bytes(b"not an image at all\n")
    _copy(EXTRA, lay.extra)
    _bulk(lay.bulk)
    outside.mkdir()
    shutil.copyfile(CALTECH / "crab/image_0002.jpg", outside / "secret.jpg")
    os.symlink(outside / "secret.jpg", allowed / "escape.jpg")
    os.symlink(outside, allowed / "escape_dir")
    os.symlink(outside / "secret.jpg", lay.incoming / "link_out.jpg")
    return lay


@pytest.fixture(scope="session")
def small_model() -> DescriptorModel:
    return DescriptorModel.create("efficientnet_lite0", max_side=128, scales=(1.0,))


def build_collection(data_dir: Path, db_url: str | None, model: DescriptorModel, paths: list[Path]) -> None:
    """Index ``paths`` into a new collection with the real pipeline and the yolox_nano detector."""
    from retrieval.vision import create_detector

    collection = Collection.open(data_dir, db_url=db_url, model=model)
    try:
        detector = create_detector("yolox_nano", model_dir=MODEL_DIR)
        settings = IngestSettings(batch_size=8, workers=1)
        ingest = LocalIngest.over(collection, settings, detector=detector, options=IndexOptions(progress=False))
        summary = ingest.run([str(p) for p in paths])
        assert summary.failed == 0, summary.failures
    finally:
        collection.close()


def make_settings(data_dir: Path, db_url: str | None, lay: Layout, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "db": db_url,
        "device": "cpu",
        "api_keys": [API_KEY, OTHER_KEY],
        "allowed_roots": [lay.allowed],
        "rate_limit_per_minute": 0,
        "model_dir": MODEL_DIR,
        "job_nice": 0,
        "job_batch_size": 8,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running(settings: Settings) -> Iterator[TestClient]:
    """The real app with its lifespan (the collection is opened and closed)."""
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(autouse=True, scope="module")
def _clean_environment() -> Iterator[None]:
    """Service settings come from the tests, never from the developer's IMSEARCH_* variables."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("IMSEARCH_") and name != "IMSEARCH_TEST_PG_URL":
                mp.delenv(name)
        yield


@contextmanager
def postgres_database(admin_url: str, user_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database on the test server, dropped afterwards."""
    name = f"imsearch_api_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield user_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def module_db_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """A catalog for a module's collection: SQLite in the data dir (None), or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    server = request.getfixturevalue("_pg_server")
    with postgres_database(server.admin_url, server.url) as url:
        yield url


def photo_bytes(path: Path) -> bytes:
    return path.read_bytes()


def upload(path: Path | str, data: bytes | None = None, mime: str = "image/jpeg") -> dict[str, Any]:
    name = Path(path).name
    return {"file": (name, data if data is not None else Path(path).read_bytes(), mime)}


def random_noise_png(side: int, seed: int = 0) -> bytes:
    import io

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
