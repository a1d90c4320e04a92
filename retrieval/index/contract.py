"""The vector-index contract every implementation keeps (FAISS, sharded, shards in Ray actors).

Array contract: vectors and queries are float32 ``(n, dim)`` C-contiguous; ids are non-negative
int64 catalog keys (stable, any order, not contiguous). ``search`` returns ``(D, I)``: float32
inner products and int64 ids, best first, padded with ``I = -1`` / ``D = -inf`` when fewer than
k results exist. A selector (``allowed_ids`` / ``exclude_ids``) is applied *inside* the search,
so k results come back whenever k selected vectors exist.

The SQL catalog is the source of truth: an index is a persisted, rebuildable structure, and
:class:`~retrieval.collection.Collection` repairs it from the catalog after a crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from retrieval.index.search import SearchParams


@runtime_checkable
class VectorIndex(Protocol):
    """What :class:`~retrieval.collection.Collection` and the search engine need of an index."""

    @property
    def dim(self) -> int: ...

    @property
    def kind(self) -> str:
        """The kind asked for at creation (``auto``, ``flat``, ``ivfsq``... or a factory string)."""
        ...

    @property
    def factory(self) -> str:
        """What serves searches now (a FAISS factory string; sharded: the shards')."""
        ...

    @property
    def trained_size(self) -> int:
        """Collection size the current structure was trained at (0: needs no training)."""
        ...

    @property
    def model_info(self) -> dict[str, Any]: ...

    @model_info.setter
    def model_info(self, value: dict[str, Any]) -> None: ...

    def __len__(self) -> int: ...

    def ids(self) -> np.ndarray:
        """All ids, sorted (int64)."""
        ...

    def contains(self, ids: Any) -> np.ndarray: ...

    def reconstruct(self, ids: Any) -> np.ndarray: ...

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed_ids: np.ndarray | None = None,
        exclude_ids: np.ndarray | None = None,
        params: SearchParams | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def add(self, ids: Any, vectors: np.ndarray) -> None:
        """Add or replace vectors."""
        ...

    def remove(self, ids: Any) -> int: ...

    def retrain(self) -> None: ...

    def memory_usage(self) -> dict[str, float]: ...

    def save(self, directory: str | Path) -> None:
        """Write atomically to ``directory``."""
        ...

    def close(self) -> None: ...
