"""Ingestion: THE map step (:class:`Describer`), the runners that drive it (local threads,
Ray Data), scanning, and the writer side that hands records to a :class:`Collection`.

Every front door (``imsearch index`` / ``reindex``, the API's uploads and index jobs) describes
images through :class:`Describer`, built from one :class:`IngestSettings`.
"""

from retrieval.ingest.describe import Described, Describer, SourceItem, read_file, with_location
from retrieval.ingest.local import LocalIngest
from retrieval.ingest.settings import IngestSettings
from retrieval.ingest.summary import IndexOptions, IndexSummary

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
