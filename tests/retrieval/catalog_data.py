"""Helpers the catalog tests share: images with deterministic hashes, a registered model."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy.orm import Session

from retrieval.store import catalog
from retrieval.store.catalog import FileInfo, ImageInfo


def sha(name: object) -> str:
    return hashlib.sha256(str(name).encode()).hexdigest()


def info(name: object, path: str | None = None, **kw: Any) -> ImageInfo:
    fields: dict[str, Any] = {"size_bytes": 1000, "width": 640, "height": 480, "format": "JPEG"}
    fields.update(kw)
    return ImageInfo(sha256=sha(name), path=path, **fields)


def add_image(session: Session, name: object, path: str | None = None, **kw: Any) -> int:
    image_id = int(catalog.upsert_images(session, images=[info(name, path, **kw)])[0])
    if path is not None:
        catalog.upsert_files(session, files=[FileInfo(path=path, image_id=image_id, size_bytes=1000, mtime_ns=1)])
    return image_id


def model_id(session: Session) -> int:
    return catalog.register_model(session, fingerprint="fp-test", name="test", meta={"dim": 4}).id
