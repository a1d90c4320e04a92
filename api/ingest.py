"""Adding single images through the API: uploads (kept under ``uploads/``) and server-side files.

Images are described by the one map step (:class:`retrieval.ingest.Describer`: the same
decoding, descriptor, and, when the settings ask for them, detections, region descriptors and
labels as the bulk indexer) and stored through :meth:`Collection.write`. Uploads are
content-addressed: ``uploads/ab/<sha256>.<ext>``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from api.compute import ModelRunner
from api.errors import ApiError
from api.settings import Settings
from retrieval.collection import IndexedImage
from retrieval.errors import ImageDecodeError
from retrieval.imageio import probe_image
from retrieval.ingest import Describer, IngestSettings, SourceItem, read_file, with_location
from retrieval.search import SearchEngine
from retrieval.store import catalog
from retrieval.store.catalog import FileInfo, ImageRecord
from retrieval.store.keys import image_key

logger = logging.getLogger(__name__)

_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


def check_image(data: bytes, name: str, settings: Settings) -> tuple[int, int, str]:
    """Header checks before any decoding: a known format (else 415) within the pixel budget (else 422)."""
    if len(data) > settings.max_upload_bytes:
        raise ApiError(
            413,
            f"{name} is {len(data)} bytes, over the limit of {settings.max_upload_bytes} bytes",
            kind="upload-too-large",
            title="Upload too large",
        )
    width, height, fmt = probe_image(data, name=name)
    if width * height > settings.max_pixels:
        raise ApiError(
            422,
            f"{name} is {width}x{height} = {width * height} pixels, over this server's limit of "
            f"{settings.max_pixels}; send a smaller image",
            kind="image-too-large",
            title="Image too large",
        )
    return width, height, fmt


def ingest_settings(settings: Settings, **changes: Any) -> IngestSettings:
    """The map step's settings from the server's: the same annotators, thresholds and limits
    for uploads, server-side files and index jobs."""
    base = IngestSettings(
        detect=settings.detect,
        segment=settings.segment,
        detector=settings.detector,
        segmenter=settings.segmenter,
        model_dir=str(settings.model_dir) if settings.model_dir else None,
        region_min_score=settings.region_min_score,
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_pixels,
        roots=tuple(str(r) for r in settings.allowed_roots),
        device=settings.device,
    )
    return base.with_(**changes) if changes else base


class Ingestor:
    """Describes (through the one map step, :class:`Describer`) and writes single images."""

    def __init__(self, engine: SearchEngine, settings: Settings, model: ModelRunner) -> None:
        self.engine = engine
        self.settings = settings
        self.model = model
        # shares the search extractor; the detector/segmenter are loaded on first use
        self.describer = Describer(ingest_settings(settings), extractor=engine.extractor)

    # ------------------------------------------------------------------ adding
    def add_bytes(self, data: bytes, *, name: str) -> tuple[ImageRecord, bool]:
        """Add an uploaded image; returns (its record, whether it is new)."""
        sha = hashlib.sha256(data).hexdigest()
        existing = self._existing(image_key(sha))
        if existing is not None:
            return existing, False
        check_image(data, name, self.settings)
        image = self._describe(SourceItem(name, data=data), name)
        stored = self._store_upload(data, sha, image.format)
        self.engine.collection.write([with_location(image, stored_path=stored)])
        self.engine.collection.save_if_due(self.settings.save_every_s)
        return self.engine.image(image_key(sha)), True

    def add_file(self, path: Path) -> tuple[ImageRecord, bool]:
        """Add a file already on the server (``path`` confined and resolved by the caller)."""
        if not path.is_file():
            raise ApiError(404, f"{path} does not exist or is not a file", kind="not-found", title="Not found")
        got = read_file(str(path), self.settings.max_upload_bytes, roots=self.describer.settings.roots)
        if isinstance(got, str):
            if "over the limit" in got:
                raise ApiError(413, f"{path}: {got}", kind="upload-too-large", title="File too large")
            raise ImageDecodeError(str(path), got)
        data, size, mtime_ns = got
        sha = hashlib.sha256(data).hexdigest()
        existing = self._existing(image_key(sha))
        if existing is not None:
            file_info = FileInfo(path=str(path), image_id=image_key(sha), size_bytes=size, mtime_ns=mtime_ns)
            self.engine.collection.add_files([file_info])
            return existing, False
        check_image(data, str(path), self.settings)
        item = SourceItem(str(path), data=data, path=str(path), size_bytes=size, mtime_ns=mtime_ns)
        image = self._describe(item, str(path))
        self.engine.collection.write([image])
        self.engine.collection.save_if_due(self.settings.save_every_s)
        return self.engine.image(image_key(sha)), True

    def remove(self, image_id: int) -> ImageRecord:
        """Delete an image from the collection (and its uploaded original, if any)."""
        record = self.engine.image(image_id)
        self.engine.collection.remove_images([image_id])
        self.engine.collection.save_if_due(self.settings.save_every_s)
        if record.stored_path:
            stored = (self.engine.collection.root / record.stored_path).resolve()
            if stored.is_relative_to(self.settings.uploads_dir):
                stored.unlink(missing_ok=True)
        return record

    def _existing(self, image_id: int) -> ImageRecord | None:
        return self.engine.collection.read(catalog.get_image, image_id=image_id)

    def _describe(self, item: SourceItem, name: str) -> IndexedImage:
        """The map step on the model thread; a failure names the upload or file."""
        described = self.model.run(self.describer.describe_one, item)
        if described.image is None:
            raise ImageDecodeError(name, described.error or "no descriptor")
        return described.image

    def _store_upload(self, data: bytes, sha: str, fmt: str) -> str:
        """Write the original under uploads/ (atomically); returns its path relative to the data dir."""
        folder = self.settings.uploads_dir / sha[:2]
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{sha}{_EXTENSIONS.get(fmt, '.img')}"
        if not target.exists():
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return str(target.relative_to(self.engine.collection.root))
