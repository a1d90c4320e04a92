"""Adding single images through the API: uploads (kept under ``uploads/``) and server-side files.

The result is stored exactly like the bulk indexer stores it (same decoding, descriptor,
and, when the settings ask for them, detections, region descriptors and labels), through
:meth:`Collection.write`. Uploads are content-addressed: ``uploads/ab/<sha256>.<ext>``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.compute import ModelRunner
from api.errors import ApiError
from api.settings import Settings
from retrieval.collection import IndexedImage, RegionOut
from retrieval.errors import ImageDecodeError
from retrieval.imageio import DecodedImage, decode_image, probe_image
from retrieval.models.extract import ExtractResult
from retrieval.search import SearchEngine
from retrieval.store import catalog
from retrieval.store.catalog import FileInfo, ImageRecord, LabelStat
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


@dataclass(frozen=True)
class Described:
    result: ExtractResult
    regions: tuple[RegionOut, ...]
    labels: dict[str, list[LabelStat]]
    sources: tuple[str, ...]


class Ingestor:
    """Describes and writes single images; the detector/segmenter are loaded on first use."""

    def __init__(self, engine: SearchEngine, settings: Settings, model: ModelRunner) -> None:
        self.engine = engine
        self.settings = settings
        self.model = model
        self._lock = threading.Lock()
        self._detector: Any = None
        self._segmenter: Any = None

    # ------------------------------------------------------------------ adding
    def add_bytes(self, data: bytes, *, name: str) -> tuple[ImageRecord, bool]:
        """Add an uploaded image; returns (its record, whether it is new)."""
        sha = hashlib.sha256(data).hexdigest()
        existing = self._existing(image_key(sha))
        if existing is not None:
            return existing, False
        check_image(data, name, self.settings)
        described = self.model.run(self.describe, data, name)
        info = described.result.info
        assert info is not None  # a successful extraction has its info
        stored = self._store_upload(data, sha, info.format)
        item = self._indexed(described, sha=sha, size=len(data), stored_path=stored)
        self.engine.collection.write([item])
        self.engine.collection.save_if_due(self.settings.save_every_s)
        return self.engine.image(image_key(sha)), True

    def add_file(self, path: Path) -> tuple[ImageRecord, bool]:
        """Add a file already on the server (``path`` confined and resolved by the caller)."""
        if not path.is_file():
            raise ApiError(404, f"{path} does not exist or is not a file", kind="not-found", title="Not found")
        stat = path.stat()
        if stat.st_size > self.settings.max_upload_bytes:
            raise ApiError(
                413,
                f"{path} is {stat.st_size} bytes, over the limit of {self.settings.max_upload_bytes}",
                kind="upload-too-large",
                title="File too large",
            )
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageDecodeError(str(path), f"cannot read file: {exc.strerror or exc}") from None
        sha = hashlib.sha256(data).hexdigest()
        file_info = FileInfo(path=str(path), image_id=image_key(sha), size_bytes=len(data), mtime_ns=stat.st_mtime_ns)
        existing = self._existing(image_key(sha))
        if existing is not None:
            self.engine.collection.add_files([file_info])
            return existing, False
        check_image(data, str(path), self.settings)
        described = self.model.run(self.describe, data, str(path))
        item = self._indexed(described, sha=sha, size=len(data), path=str(path), mtime_ns=stat.st_mtime_ns)
        self.engine.collection.write([item])
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

    # ------------------------------------------------------------------ describing
    def describe(self, data: bytes, name: str) -> Described:
        """Descriptor (and, per the settings, detections, regions and labels) of one image."""
        extractor = self.engine.extractor
        if not (self.settings.detect or self.settings.segment):
            res = extractor.extract_one(data)
            return Described(self._ok(res, name), (), {}, ())
        meta = extractor.meta
        need = math.ceil(meta.max_side * max(meta.scales))
        decoded = decode_image(data, name=name, max_side=need, max_pixels=self.settings.max_pixels)
        detections, segmentation = self._annotate(decoded)
        keep = [d for d in detections if d.score >= self.settings.region_min_score]
        res = self._ok(extractor.extract_one(decoded, boxes=[d.box for d in keep]), name)
        assert res.info is not None
        regions: tuple[RegionOut, ...] = ()
        if res.regions is not None and keep:
            regions = tuple(
                RegionOut(box, "detector", vec, d.label, d.score)
                for box, vec, d in zip(res.boxes, res.regions, keep, strict=True)
            )
        from retrieval.vision import image_labels

        labels: dict[str, list[LabelStat]] = {}
        if self.settings.detect:
            labels["detector"] = []
        if self.settings.segment:
            labels["segmenter"] = []
        for lab in image_labels(detections, segmentation, image_size=(res.info.width, res.info.height)):
            labels.setdefault(lab.source, []).append(LabelStat(lab.label, lab.max_score, lab.area_fraction, lab.count))
        return Described(res, regions, labels, ("detector",) if self.settings.detect else ())

    @staticmethod
    def _ok(res: ExtractResult, name: str) -> ExtractResult:
        if res.error is not None or res.descriptor is None or res.info is None:
            raise ImageDecodeError(name, res.error or "no descriptor")
        return res

    def _annotate(self, decoded: DecodedImage) -> tuple[list[Any], Any]:
        from retrieval.vision import annotate, create_detector, create_segmenter

        with self._lock:
            if self.settings.detect and self._detector is None:
                self._detector = create_detector(self.settings.detector, model_dir=self.settings.model_dir)
            if self.settings.segment and self._segmenter is None:
                self._segmenter = create_segmenter(self.settings.segmenter, model_dir=self.settings.model_dir)
        return annotate(decoded, self._detector, self._segmenter)

    @staticmethod
    def _indexed(described: Described, *, sha: str, size: int, **where: Any) -> IndexedImage:
        res = described.result
        assert res.info is not None and res.descriptor is not None
        return IndexedImage(
            sha256=sha,
            size_bytes=size,
            width=res.info.width,
            height=res.info.height,
            format=res.info.format,
            descriptor=res.descriptor,
            exif_time=res.info.exif_time,
            regions=described.regions,
            labels=described.labels,
            replace_sources=described.sources,
            **where,
        )

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
