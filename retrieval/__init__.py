"""imsearch retrieval library: descriptors, vector index, catalog and search engine.

Nothing here starts a server or parses command lines; the ``indexer`` (CLI, bulk job)
and ``api`` (HTTP service) packages are the two front doors onto this library.
"""

from retrieval.errors import ImsearchError

__all__ = ["ImsearchError"]
__version__ = "0.1.0"
