"""Unlabelled photos for self-supervised (copy) training: every photo is its own group.

Three inputs are read:

* a **folder of photos** (:func:`photo_folder`): every image below it, recursively (hidden
  files and folders skipped);
* a **CSV** with a path column (:func:`photo_csv`);
* a **collection's data directory** (:func:`collection_photos`): the photos its SQLite
  catalog (``catalog.db``) has indexed, read read-only.

Files with identical content (same sha256) are ONE group, so a duplicate is never mined as
a negative of its twin; the group names are the content sha256s. :func:`split_by_photo`
holds out a seeded share of the photos by content (:func:`retrieval.edits.split_photos`
on the sha256s), so twins always land on the same side and the split does not depend on
the order the files were listed in.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import numpy as np

from retrieval.edits import split_photos
from retrieval.errors import TrainingError
from retrieval.evaluate import IMAGE_EXTENSIONS
from retrieval.progress import Mode, Progress
from retrieval.train.data import TrainingData, _read_csv, _resolve

logger = logging.getLogger(__name__)

#: the catalog file that makes a folder a collection's data directory
CATALOG_FILE = "catalog.db"
#: hashing this many files or more shows progress
_PROGRESS_MIN_FILES = 500


def sha256_file(path: Path) -> str:
    """The sha256 (hex) of a file's bytes."""
    try:
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise TrainingError(f"cannot read training photo {path}: {exc}") from exc


def content_ids(paths: Sequence[Path], *, workers: int = 4) -> list[str]:
    """The sha256 of each file, in order (hashed in a thread pool, with progress for many files)."""
    mode: Mode = "auto" if len(paths) >= _PROGRESS_MIN_FILES else "off"
    out: list[str] = []
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="imsearch-train-hash") as pool, \
            Progress(len(paths), desc="hashing training photos", unit="files", logger=logger, mode=mode) as bar:
        for digest in pool.map(sha256_file, paths):
            out.append(digest)
            bar.update()
    return out


def photo_data(paths: Sequence[Path], source: str, shas: Sequence[str] | None = None) -> TrainingData:
    """Self-supervised data: one group per distinct content (sha256), named by its sha256."""
    if not paths:
        raise TrainingError(f"{source}: no photos to train on")
    digests = list(shas) if shas is not None else content_ids(paths)
    if len(digests) != len(paths):
        raise TrainingError(f"{len(paths)} photos but {len(digests)} content hashes")
    names: list[str] = []
    index: dict[str, int] = {}
    groups = np.empty(len(paths), dtype=np.int64)
    for i, digest in enumerate(digests):
        if digest not in index:
            index[digest] = len(names)
            names.append(digest)
        groups[i] = index[digest]
    if len(names) < len(paths):
        logger.info("%s: %d of %d photos are byte-identical to another one (kept together, never each other's "
                    "negative)", source, len(paths) - len(names), len(paths))
    return TrainingData(tuple(paths), groups, tuple(names), source=source, self_supervised=True)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def photo_folder(root: str | Path) -> TrainingData:
    """Every image file below ``root`` (recursively; hidden files and folders skipped), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise TrainingError(f"photo folder {root} does not exist or is not a folder")
    paths = sorted(p for p in root.rglob("*")
                   if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not _hidden(p, root))
    if len(paths) < 2:
        raise TrainingError(f"{root} holds {len(paths)} photo(s); self-supervised training needs at least 2 "
                            f"(image files: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return photo_data(paths, str(root))


def photo_csv(path: str | Path, path_column: str = "path") -> TrainingData:
    """The photos listed in the ``path_column`` of a CSV (relative paths: to the CSV's folder)."""
    path = Path(path)
    rows = _read_csv(path, (path_column,))
    seen: set[Path] = set()
    paths: list[Path] = []
    missing: list[str] = []
    for line, (value,) in rows:
        p = _resolve(path, value)
        if not p.is_file():
            missing.append(f"line {line}: {p}")
        elif p.resolve() not in seen:
            seen.add(p.resolve())
            paths.append(p)
    if missing:
        raise TrainingError(f"{path}: {len(missing)} listed photo(s) do not exist: {'; '.join(missing[:5])}")
    return photo_data(paths, str(path))


def is_collection_dir(root: Path) -> bool:
    return (root / CATALOG_FILE).is_file()


def collection_photos(root: str | Path) -> TrainingData:
    """The photos a collection's data directory has indexed (one per distinct image; uploads included).

    Reads ``catalog.db`` read-only with the standard library (never migrates or locks it); the
    content sha256s come from the catalog. Images whose file is gone are skipped with a warning.
    A collection on PostgreSQL has no ``catalog.db``: list its photos in a CSV instead.
    """
    root = Path(root).expanduser().resolve()
    db = root / CATALOG_FILE
    if not db.is_file():
        raise TrainingError(f"{root} is not a collection's data directory (no {CATALOG_FILE})")
    try:
        con = sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True, timeout=5.0)
        try:
            rows = con.execute("SELECT sha256, path, stored_path FROM images ORDER BY id").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise TrainingError(f"cannot read the collection catalog {db}: {exc}") from exc
    paths: list[Path] = []
    shas: list[str] = []
    gone = 0
    for sha, path, stored in rows:
        p = Path(path) if path else root / stored if stored else None
        if p is None or not p.is_file():
            gone += 1
            continue
        paths.append(p)
        shas.append(str(sha))
    if gone:
        logger.warning("%s: %d indexed image(s) have no file any more; skipped", root, gone)
    if len(paths) < 2:
        raise TrainingError(f"the collection in {root} has {len(paths)} photo(s) on disk; training needs at least 2")
    logger.info("collection %s: %d indexed photos", root, len(paths))
    return photo_data(paths, f"collection {root}", shas)


def has_group_folders(root: Path) -> bool:
    """Whether ``root`` has a (non-hidden) sub-folder with an image in it, at any depth."""
    folders = [f for f in root.iterdir() if f.is_dir() and not f.name.startswith(".")]
    return any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() for f in folders for p in f.rglob("*"))


def split_by_photo(data: TrainingData, fraction: float, *, seed: int = 0) -> tuple[TrainingData, TrainingData | None]:
    """Hold out a seeded share of the photos (by content sha256): ``(train, val)``; ``val`` None when empty.

    At least two distinct photos always stay for training.
    """
    keys = [data.group_names[g] for g in data.groups.tolist()]
    kept, held = split_photos(keys, fraction, seed)
    if not held:
        if fraction > 0:
            logger.warning("%s: no photo fell in the held-out %.0f %%; training without validation",
                           data.source, 100 * fraction)
        return data, None
    if len(np.unique(data.groups[kept])) < 2:
        logger.warning("%s: holding %d photo(s) out would leave fewer than 2 to train on; training without "
                       "validation", data.source, len(held))
        return data, None
    return data.subset(kept), data.subset(held)
