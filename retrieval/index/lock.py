"""Locks of the vector index: readers/writer lock in a process, one writer per directory across processes."""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retrieval.errors import VectorIndexError

LOCK_NAME = ".writer.lock"


class RWLock:
    """Many concurrent readers or one writer; a waiting writer blocks new readers (no starvation).

    Not re-entrant: code holding the lock must not take it again.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class DirLock:
    """Exclusive ``flock`` on ``<directory>/.writer.lock``.

    A FaissIndex holds it from its first append to a memory-mapped vectors file until the save
    that commits those rows (and during every save). Two writers appending to the same file
    would corrupt each other's rows, so a second writer (another process, or another FaissIndex
    in this one) gets a clear error instead.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        path = directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise VectorIndexError(
                f"index directory {directory} is being written by another FaissIndex (pid {holder}); "
                "close() that one first, or save to another directory"
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._release = weakref.finalize(self, os.close, fd)  # closing the fd drops the flock

    def release(self) -> None:
        self._release()
