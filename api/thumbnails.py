"""Thumbnails of indexed images, made on first request and cached on disk.

Image ids are content hashes, so a thumbnail never goes stale: the cache file
``thumbnails/<id>-<size>.jpg`` is served with a long ``Cache-Control`` and removed
only when the image is deleted. It is made from the original read through
:meth:`SearchEngine.image_bytes`, i.e. only from a file inside the allowed roots that still
holds the indexed content. Sizes snap up to a few fixed ones, so the cache is bounded.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image

from retrieval.imageio import decode_image
from retrieval.search import SearchEngine

SIZES = (128, 256, 512, 1024)


def snap_size(size: int) -> int:
    """The smallest cached size at least ``size`` (the largest one beyond it)."""
    return next((s for s in SIZES if s >= size), SIZES[-1])


class ThumbnailCache:
    def __init__(self, directory: Path, *, quality: int = 85, max_pixels: int = 60_000_000) -> None:
        self.directory = directory
        self.quality = quality
        self.max_pixels = max_pixels

    def path(self, image_id: int, size: int) -> Path:
        return self.directory / f"{image_id}-{size}.jpg"

    def get(self, engine: SearchEngine, image_id: int, size: int) -> Path:
        """The cached thumbnail of ``image_id`` (long side ``snap_size(size)``), made if missing."""
        size = snap_size(size)
        target = self.path(image_id, size)
        if target.is_file():
            engine.image(image_id)  # still indexed? (NotFoundError -> 404)
            return target
        source = engine.image_bytes(image_id)  # confined and checked (FileAccessError / FileChangedError)
        decoded = decode_image(source, name=f"image {image_id}", max_side=size, max_pixels=self.max_pixels)
        image = Image.fromarray(decoded.pixels)
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".thumb-", suffix=".jpg")
        try:
            with os.fdopen(fd, "wb") as fh:
                image.save(fh, format="JPEG", quality=self.quality, optimize=True)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def forget(self, image_id: int) -> None:
        for size in SIZES:
            self.path(image_id, size).unlink(missing_ok=True)
