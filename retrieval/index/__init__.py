"""Vector indexes behind one contract (:class:`VectorIndex`): FAISS, and a factory by kind."""

from retrieval.index.contract import VectorIndex
from retrieval.index.faiss_index import FaissIndex
from retrieval.index.search import SearchParams

__all__ = ["FaissIndex", "SearchParams", "VectorIndex"]
