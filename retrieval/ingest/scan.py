"""Walking a photo collection: which files are images, deliberately.

* Extensions: jpg, jpeg, png, webp, bmp, tif, tiff, gif (case-insensitive). Content is
  what decides in the end: a text file named ``.jpg`` fails decoding with a reason.
* Hidden files and folders (name starting with ``.``) are skipped unless asked for.
* Symbolic links are skipped by default (a link can point outside the collection, or
  into a loop); with ``follow_symlinks`` they are followed, each real folder visited once.
* Anything that is not a regular file (FIFOs, sockets, devices) is never opened.
* Paths are absolute and not resolved through links, so they stay what the user sees.
"""

from __future__ import annotations

import csv
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import ImsearchError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def scan(
    roots: Iterable[str | os.PathLike[str]],
    *,
    follow_symlinks: bool = False,
    include_hidden: bool = False,
) -> Iterator[FileEntry | Skipped]:
    """Yield image files under ``roots`` (files or folders), sorted per folder, and notable skips."""
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        path = os.path.abspath(os.fspath(root))
        try:
            st = os.stat(path) if follow_symlinks or not os.path.islink(path) else os.lstat(path)
        except OSError as exc:
            yield Skipped(path, f"cannot access: {exc.strerror or exc}")
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(path, seen_dirs, follow_symlinks, include_hidden)
        elif stat.S_ISREG(st.st_mode):
            yield FileEntry(path, st.st_size, st.st_mtime_ns)  # named explicitly: taken whatever its extension
        elif stat.S_ISLNK(st.st_mode):
            yield Skipped(path, "symbolic link (use --follow-symlinks to follow links)")
        else:
            yield Skipped(path, "not a regular file or folder")


def _walk(top: str, seen: set[tuple[int, int]], follow: bool, hidden: bool) -> Iterator[FileEntry | Skipped]:
    try:
        st = os.stat(top)
    except OSError as exc:
        yield Skipped(top, f"cannot access: {exc.strerror or exc}")
        return
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return  # a loop, or a folder reached twice through links
    seen.add(key)
    try:
        with os.scandir(top) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield Skipped(top, f"cannot list folder: {exc.strerror or exc}")
        return
    subdirs = []
    for entry in entries:
        if not hidden and entry.name.startswith("."):
            continue
        try:
            if entry.is_symlink() and not follow:
                if is_image_name(entry.name) or entry.is_dir():
                    yield Skipped(entry.path, "symbolic link (use --follow-symlinks to follow links)")
                continue
            if entry.is_dir(follow_symlinks=follow):
                subdirs.append(entry.path)
                continue
            if not is_image_name(entry.name):
                continue
            if not entry.is_file(follow_symlinks=follow):
                yield Skipped(entry.path, "not a regular file")
                continue
            est = entry.stat(follow_symlinks=follow)
        except OSError as exc:
            yield Skipped(entry.path, f"cannot access: {exc.strerror or exc}")
            continue
        yield FileEntry(entry.path, est.st_size, est.st_mtime_ns)
    for sub in subdirs:
        yield from _walk(sub, seen, follow, hidden)


def under(path: str | os.PathLike[str]) -> str:
    """The path prefix of everything inside ``path`` (absolute, with a trailing separator)."""
    p = os.path.abspath(os.fspath(path))
    return p if Path(p).is_file() else p.rstrip(os.sep) + os.sep


def read_manifest(path: str | os.PathLike[str]) -> list[str]:
    """Image paths listed in a manifest: a CSV with a ``path`` column (or one path a line), or a
    Parquet file with a ``path`` column."""
    p = Path(path)
    if not p.is_file():
        raise ImsearchError(f"manifest {p} does not exist")
    if p.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(p)
        if "path" not in table.column_names:
            raise ImsearchError(f"manifest {p} has no 'path' column (columns: {', '.join(table.column_names)})")
        return [str(v) for v in table.column("path").to_pylist() if v]
    with p.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    if "path" in header:
        col = header.index("path")
        return [r[col].strip() for r in rows[1:] if len(r) > col and r[col].strip()]
    return [r[0].strip() for r in rows if r and r[0].strip()]
