"""Ingestion: THE map step (:class:`Describer`), the runners that drive it (local threads,
Ray Data), scanning, and the writer side that hands records to a :class:`Collection`.

Every front door (``imsearch index`` / ``reindex``, the API's uploads and index jobs) describes
images through :class:`Describer`, built from one :class:`IngestSettings`.

Names are imported on first use: ``retrieval.ingest.settings`` (the defaults the command line
shows in its help) loads neither torch nor the catalog.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retrieval.ingest.describe import Described, Describer, SourceItem, read_file, with_location
    from retrieval.ingest.local import LocalIngest
    from retrieval.ingest.settings import IngestSettings
    from retrieval.ingest.summary import IndexOptions, IndexSummary

_WHERE = {
    "Described": "describe",
    "Describer": "describe",
    "SourceItem": "describe",
    "read_file": "describe",
    "with_location": "describe",
    "LocalIngest": "local",
    "IngestSettings": "settings",
    "IndexOptions": "summary",
    "IndexSummary": "summary",
}

__all__ = [
    "Described",
    "Describer",
    "IndexOptions",
    "IndexSummary",
    "IngestSettings",
    "LocalIngest",
    "SourceItem",
    "read_file",
    "with_location",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'retrieval.ingest' has no attribute {name!r}")
    return getattr(import_module(f"retrieval.ingest.{module}"), name)
