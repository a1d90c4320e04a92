"""Reading indexed files safely: inside the allowed roots, and still the content that was indexed.

Every read of an indexed original (the API's original, thumbnail and box search; index
jobs, ``reindex`` and duplicates) goes through here, because what the catalog names is
only a path: between indexing and now, the file may have been deleted, replaced by a
symbolic link to a file outside the roots, swapped for a FIFO, or edited.

* :func:`confine` resolves a path (every symlink on the way) and accepts it only when the
  result is a regular file inside one of the roots.
* :func:`open_confined` opens it without following a link swapped in meanwhile
  (``O_NOFOLLOW``, ``O_NONBLOCK`` against FIFOs) and checks again where the *opened* file
  is (``/proc/self/fd``), so a swap between the check and the open is caught too.
* :func:`open_indexed` (bytes) and :func:`open_indexed_file` (an open file, for streaming)
  also check the content: same size and mtime as when indexed, else the SHA-256 must match.

Errors are :class:`FileAccessError` (gone, not a regular file, outside the roots: the API
answers 404) and :class:`FileChangedError` (the content differs: 409). Their messages name
the path the caller gave and what is wrong; never a byte of the file, and never where a
link resolves (that would tell a client what lies outside the roots).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from retrieval.errors import ImageDecodeError, ImsearchError
from retrieval.imageio import DEFAULT_MAX_BYTES

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_PROC_FD = Path("/proc/self/fd")

T = TypeVar("T")


class FileAccessError(ImsearchError):
    """An indexed file cannot be read: gone, not a regular file, or outside the allowed roots."""


class FileChangedError(FileAccessError):
    """An indexed file is there but no longer holds the content it was indexed with."""


Roots = Sequence[Path] | None


def _real_roots(roots: Sequence[Path]) -> list[Path]:
    return [Path(os.path.realpath(root)) for root in roots]


def _inside(real: Path, roots: Sequence[Path]) -> bool:
    return any(real == root or real.is_relative_to(root) for root in _real_roots(roots))


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def confine(path: str | os.PathLike[str], roots: Roots) -> Path:
    """The real path of ``path``: a regular file inside one of ``roots`` after every symlink is resolved.

    ``roots=None``: no folder confinement (the command line, or a server without allowed
    roots, reads the files its operator indexed wherever they are), but the file itself
    must not be a symbolic link, so a link swapped in for an indexed file is refused. An
    empty sequence confines to nothing: every path is refused. Raises
    :class:`FileAccessError` when the file is missing, not a regular file (a folder, a
    FIFO, a device) or outside the roots; the message names ``path`` as given, never
    where it resolves.
    """
    raw = os.fspath(path)
    if not raw or "\x00" in raw:
        raise FileAccessError("the path is empty or contains a NUL character")
    if roots is None and os.path.islink(raw):
        raise FileAccessError(f"{raw} is a symbolic link, not the file that was indexed")
    try:
        real = Path(os.path.realpath(raw, strict=True))
    except FileNotFoundError:
        raise FileAccessError(f"{raw} is no longer on disk") from None
    except OSError as exc:  # a link loop, a permission denied on the way
        raise FileAccessError(f"{raw} cannot be resolved ({_why(exc)})") from None
    if roots is not None and not _inside(real, roots):
        raise FileAccessError(f"{raw} is outside the folders this server may read (or links out of them)")
    try:
        mode = os.stat(real).st_mode
    except OSError as exc:
        raise FileAccessError(f"{raw} cannot be read ({_why(exc)})") from None
    if not stat.S_ISREG(mode):
        raise FileAccessError(f"{raw} is not a regular file")
    return real


def _opened_path(fd: int) -> Path | None:
    """Where the open file ``fd`` really is (Linux ``/proc``); None where that cannot be told."""
    try:
        target = os.readlink(_PROC_FD / str(fd))
    except OSError:
        return None
    return Path(target)


def open_confined(path: str | os.PathLike[str], roots: Roots) -> tuple[Path, BinaryIO]:
    """``(real path, open binary file)`` of a regular file inside ``roots`` (see :func:`confine`).

    The file is opened with ``O_NOFOLLOW`` (a link swapped in after the check is refused)
    and ``O_NONBLOCK`` (a FIFO cannot hang the caller), then checked again from the open
    descriptor: a regular file, inside the roots. The caller closes the file.
    """
    raw = os.fspath(path)
    real = confine(raw, roots)
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except FileNotFoundError:
        raise FileAccessError(f"{raw} is no longer on disk") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileAccessError(f"{raw} was replaced by a symbolic link while it was opened; try again") from None
        raise FileAccessError(f"{raw} cannot be opened ({_why(exc)})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileAccessError(f"{raw} is not a regular file")
        if roots is not None:
            opened = _opened_path(fd)
            if opened is not None and (str(opened).endswith(" (deleted)") or not _inside(opened, roots)):
                raise FileAccessError(f"{raw} moved while it was opened; try again")
        return real, os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _changed(raw: str, what: str) -> FileChangedError:
    return FileChangedError(f"{raw} changed since it was indexed ({what}); index it again to serve the new content")


def _check_size(raw: str, actual: int, size: int) -> None:
    if actual != size:  # the new size is not told: it would describe a file the client may not read
        raise _changed(raw, f"its size differs from the indexed {size} bytes")


def open_indexed(
    path: str | os.PathLike[str],
    *,
    roots: Roots,
    size: int,
    mtime_ns: int | None,
    sha256: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> bytes:
    """The bytes of an indexed file, checked: confined to ``roots`` and still the indexed content.

    ``size``, ``mtime_ns`` and ``sha256`` are what the catalog recorded when the file was
    indexed (``mtime_ns=None``: unknown, e.g. a stored upload; the hash is then always
    compared). Same size and mtime: the content is taken as unchanged; same size, other
    mtime: the SHA-256 decides. Raises :class:`FileAccessError` (missing, not a regular
    file, outside the roots), :class:`FileChangedError` (other content) or
    :class:`~retrieval.errors.ImageDecodeError` (over ``max_bytes``).
    """
    raw = os.fspath(path)
    _, fh = open_confined(raw, roots)
    with fh:
        st = os.fstat(fh.fileno())
        _check_size(raw, st.st_size, size)
        if st.st_size > max_bytes:
            raise ImageDecodeError(raw, f"file is {st.st_size} bytes, over the limit of {max_bytes}")
        data = fh.read(max_bytes + 1)
    _check_size(raw, len(data), size)  # it changed while being read
    if (mtime_ns is None or st.st_mtime_ns != mtime_ns) and hashlib.sha256(data).hexdigest() != sha256:
        raise _changed(raw, "its SHA-256 differs")
    return data


@dataclass
class VerifiedFile:
    """An open indexed file that passed :func:`open_indexed_file`'s checks; close it (or use ``with``)."""

    path: Path  # the real path
    file: BinaryIO
    size: int

    def chunks(self, chunk_size: int = 256 * 1024) -> Iterator[bytes]:
        """The content in chunks, closing the file at the end (for a streaming response)."""
        try:
            while block := self.file.read(chunk_size):
                yield block
        finally:
            self.file.close()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> VerifiedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_indexed_file(
    path: str | os.PathLike[str], *, roots: Roots, size: int, mtime_ns: int | None, sha256: str
) -> VerifiedFile:
    """Like :func:`open_indexed`, but the checked file is returned open at its start (to stream it).

    When the SHA-256 has to be compared, the file is read once in chunks to hash it
    (memory stays small whatever its size). The caller closes the returned file.
    """
    raw = os.fspath(path)
    real, fh = open_confined(raw, roots)
    try:
        st = os.fstat(fh.fileno())
        _check_size(raw, st.st_size, size)
        if mtime_ns is None or st.st_mtime_ns != mtime_ns:
            digest = hashlib.sha256()
            while block := fh.read(_CHUNK):
                digest.update(block)
            if digest.hexdigest() != sha256:
                raise _changed(raw, "its SHA-256 differs")
            fh.seek(0)
        return VerifiedFile(real, fh, st.st_size)
    except BaseException:
        fh.close()
        raise


@dataclass(frozen=True)
class IndexedFile:
    """One place an indexed image's content may be read from, and what it must still hold there."""

    path: str
    roots: Roots
    size: int
    sha256: str
    mtime_ns: int | None = None

    def read(self, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
        return open_indexed(
            self.path, roots=self.roots, size=self.size, mtime_ns=self.mtime_ns, sha256=self.sha256,
            max_bytes=max_bytes,
        )

    def open(self) -> VerifiedFile:
        return open_indexed_file(
            self.path, roots=self.roots, size=self.size, mtime_ns=self.mtime_ns, sha256=self.sha256
        )


@dataclass(frozen=True)
class FilePolicy:
    """Where a search engine may read indexed files from (the API sets its roots; the CLI reads anywhere).

    ``roots``: folders of files indexed by path (``None``: no confinement); stored uploads
    are always confined to the collection's ``uploads/``. ``max_bytes``: the most one read
    into memory may hold (a thumbnail, a box search).
    """

    roots: tuple[Path, ...] | None = None
    max_bytes: int = DEFAULT_MAX_BYTES


def first_readable(candidates: Sequence[IndexedFile], read: Callable[[IndexedFile], T], *, what: str) -> T:
    """``read`` of the first candidate that passes the checks; else the most telling error.

    A changed file (:class:`FileChangedError`, 409) outranks a missing or escaping one
    (:class:`FileAccessError`, 404); the message starts with ``what`` (e.g. "the original
    of image 42") and says what to do.
    """
    changed: FileChangedError | None = None
    refused: FileAccessError | None = None
    for candidate in candidates:
        try:
            return read(candidate)
        except FileChangedError as exc:
            changed = changed or exc
        except FileAccessError as exc:
            refused = refused or exc
    if changed is not None:
        raise FileChangedError(f"{what} cannot be served: {changed}") from None
    if refused is not None:
        raise FileAccessError(f"{what} cannot be served: {refused}") from None
    raise FileAccessError(f"{what} has no file on record")
