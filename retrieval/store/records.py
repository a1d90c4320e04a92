"""Small frozen records the catalog functions take and return (never ORM objects).

``*Info`` classes are inputs (what a caller knows); ``*Record`` classes are rows read
back, with the timestamps and keys the catalog filled in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ImageInfo:
    """An image to insert or update; its id is ``image_key(sha256)``."""

    sha256: str
    path: str | None
    size_bytes: int
    width: int
    height: int
    format: str
    exif_time: datetime | None = None
    stored_path: str | None = None


@dataclass(frozen=True)
class ImageRecord:
    id: int
    sha256: str
    path: str | None
    stored_path: str | None
    size_bytes: int
    width: int
    height: int
    format: str
    exif_time: datetime | None
    added_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class FileInfo:
    """A file on disk and the image its content hashes to."""

    path: str
    image_id: int
    size_bytes: int
    mtime_ns: int


@dataclass(frozen=True)
class FileRecord:
    path: str
    image_id: int
    size_bytes: int
    mtime_ns: int
    seen_at: datetime


@dataclass(frozen=True)
class RegionInfo:
    """A box on an image, in original-image pixels; its id is ``region_key(image_id, box, source)``."""

    image_id: int
    x0: float
    y0: float
    x1: float
    y1: float
    source: str
    label: str | None = None
    score: float | None = None

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)


@dataclass(frozen=True)
class RegionRecord:
    id: int
    image_id: int
    x0: float
    y0: float
    x1: float
    y1: float
    source: str
    label: str | None
    score: float | None

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)


@dataclass(frozen=True)
class LabelStat:
    """One label of one image from one source: best score, covered fraction, instance count."""

    label: str
    max_score: float
    area_fraction: float
    count: int


@dataclass(frozen=True)
class LabelRecord:
    image_id: int
    label: str
    source: str
    max_score: float
    area_fraction: float
    count: int


@dataclass(frozen=True)
class ModelRecord:
    id: int
    fingerprint: str
    name: str
    meta: dict[str, Any] = field(hash=False)
    created_at: datetime
    is_active: bool


@dataclass(frozen=True)
class FailureRecord:
    path: str
    reason: str
    size_bytes: int
    mtime_ns: int
    at: datetime


@dataclass(frozen=True)
class JobRecord:
    id: str
    kind: str
    status: str
    params: dict[str, Any] = field(hash=False)
    total: int
    done: int
    failed: int
    skipped: int
    message: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class CatalogStats:
    images: int
    files: int
    vectors: dict[str, int] = field(hash=False)
    regions: int
    labels: int
    failures: int
    jobs: int
