"""The read-only catalog queries of a quick search, on SQLite through the stdlib ``sqlite3``.

SQLAlchemy and Alembic take ~0.7 s to import; a query by example needs five plain SELECTs.
They read the tables of :mod:`retrieval.store.tables` and answer like the repository
functions of :mod:`retrieval.store.catalog` (``get_active_model``, ``get_vectors``,
``get_images``, ``get_labels``, the count of ``vector_ids``); a test holds them to it. The
connection is opened read-only (``mode=ro``) and never migrates, locks or writes; a
database whose schema revision is not this imsearch's newest is refused
(:class:`QuickUnavailableError`), so the normal path upgrades it.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from retrieval.quick import QuickUnavailableError

MIGRATIONS = Path(__file__).resolve().parents[1] / "store" / "migrations" / "versions"
_CHUNK = 500


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest Alembic revision shipped (the one no other revision names as its parent)."""
    revisions: dict[str, str | None] = {}
    for path in MIGRATIONS.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        rev = re.search(r"^revision\b[^=]*=\s*['\"]([^'\"]+)['\"]", text, re.M)
        down = re.search(r"^down_revision\b[^=]*=\s*(?:['\"]([^'\"]+)['\"]|None)", text, re.M)
        if rev:
            revisions[rev.group(1)] = down.group(1) if down else None
    heads = set(revisions) - {d for d in revisions.values() if d}
    if len(heads) != 1:
        raise QuickUnavailableError(f"cannot tell the newest catalog revision from {MIGRATIONS} ({sorted(heads)})")
    return heads.pop()


@dataclass(frozen=True)
class ActiveModel:
    id: int
    fingerprint: str
    meta: dict[str, Any]


@dataclass(frozen=True)
class ImageRow:
    id: int
    path: str | None
    stored_path: str | None
    width: int
    height: int


@dataclass(frozen=True)
class LabelRow:
    label: str
    source: str
    max_score: float
    area_fraction: float


class SqliteCatalog:
    """A read-only connection to a collection's ``catalog.db``."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise QuickUnavailableError(f"no SQLite catalog at {path}")
        try:
            self._con = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=5.0)
            revision = self._con.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.Error as exc:
            raise QuickUnavailableError(f"cannot read the catalog {path} read-only: {exc}") from exc
        if revision is None or revision[0] != head_revision():
            raise QuickUnavailableError(f"the catalog {path} is at schema revision {revision}, not {head_revision()}")
        self.path = path

    def close(self) -> None:
        self._con.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._con.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise QuickUnavailableError(f"catalog query failed on {self.path}: {exc}") from exc

    def _in(self, sql: str, ids: Sequence[int], extra: Sequence[Any] = ()) -> list[Any]:
        out: list[Any] = []
        keys = sorted({int(i) for i in ids})
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            out += self._rows(sql.format(marks=",".join("?" * len(chunk))), [*extra, *chunk])
        return out

    def active_model(self) -> ActiveModel | None:
        rows = self._rows("SELECT id, fingerprint, meta FROM models WHERE is_active")
        if not rows:
            return None
        model_id, fingerprint, meta = rows[0]
        return ActiveModel(int(model_id), str(fingerprint), json.loads(meta) if isinstance(meta, str) else meta)

    def vector_count(self, space: str) -> int:
        return int(self._rows("SELECT count(*) FROM vectors WHERE space = ?", [space])[0][0])

    def vector(self, space: str, vector_id: int) -> np.ndarray | None:
        """The stored float32 vector of ``vector_id`` in ``space`` (None when there is none)."""
        rows = self._rows("SELECT dim, data FROM vectors WHERE space = ? AND id = ?", [space, int(vector_id)])
        if not rows:
            return None
        dim, data = rows[0]
        if len(data) != 4 * int(dim):
            raise QuickUnavailableError(f"the stored {space} vector {vector_id} has {len(data)} bytes for dim {dim}")
        return np.frombuffer(bytes(data), dtype="<f4").astype(np.float32)

    def images(self, ids: Sequence[int]) -> list[ImageRow | None]:
        """Rows of ``ids`` in the order asked (None where an id is unknown)."""
        found = {
            int(r[0]): ImageRow(int(r[0]), r[1], r[2], int(r[3]), int(r[4]))
            for r in self._in("SELECT id, path, stored_path, width, height FROM images WHERE id IN ({marks})", ids)
        }
        return [found.get(int(i)) for i in ids]

    def labels(self, ids: Sequence[int]) -> dict[int, list[LabelRow]]:
        """Labels of each id asked (every id a key; by label, then source)."""
        out: dict[int, list[LabelRow]] = {int(i): [] for i in ids}
        sql = ("SELECT image_id, label, source, max_score, area_fraction FROM labels WHERE image_id IN ({marks}) "
               "ORDER BY image_id, label, source")
        for image_id, label, source, score, area in self._in(sql, ids):
            out[int(image_id)].append(LabelRow(label, source, float(score), float(area)))
        return out
