"""Search filters: which catalog ids a vector search may return.

A :class:`SearchFilter` is resolved by the catalog into the set of allowed vector ids,
which the vector index applies *inside* the search (FAISS ``IDSelector``), so asking for
k results returns k whenever k exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from retrieval.errors import ImsearchError


@dataclass(frozen=True)
class SearchFilter:
    """Restrictions on the images (and their regions) a search may return.

    Label conditions look at the per-image labels written by the detector and the
    segmenter. ``min_score`` and ``min_area`` qualify every label named in
    ``labels_any`` / ``labels_all``: "a person with score >= 0.5 covering >= 20 %".
    ``labels_none`` excludes an image having the label at all (with score >= min_score).
    """

    labels_any: tuple[str, ...] = ()
    labels_all: tuple[str, ...] = ()
    labels_none: tuple[str, ...] = ()
    min_score: float = 0.0
    min_area: float = 0.0
    path_prefix: str | None = None
    date_from: datetime | None = None
    date_to: datetime | None = None
    image_ids: tuple[int, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        for name in ("labels_any", "labels_all", "labels_none"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ImsearchError(f"{name} must be a sequence of label names, not the string {value!r}")
            object.__setattr__(self, name, tuple(str(v).strip().lower() for v in value if str(v).strip()))
        if not 0.0 <= self.min_score <= 1.0:
            raise ImsearchError(f"min_score must be within [0, 1], got {self.min_score}")
        if not 0.0 <= self.min_area <= 1.0:
            raise ImsearchError(f"min_area must be within [0, 1], got {self.min_area}")
        for name in ("date_from", "date_to"):  # naive datetimes are taken as UTC, like the catalog does
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                object.__setattr__(self, name, value.replace(tzinfo=UTC))
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ImsearchError(f"date_from {self.date_from} is after date_to {self.date_to}")

    @property
    def is_empty(self) -> bool:
        """True when the filter lets every image through."""
        return not (
            self.labels_any
            or self.labels_all
            or self.labels_none
            or self.path_prefix
            or self.date_from
            or self.date_to
            or self.image_ids is not None
        )
