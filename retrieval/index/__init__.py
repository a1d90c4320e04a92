"""Vector indexes behind one contract (:class:`VectorIndex`): FAISS, sharded (local or Ray
actors), a factory by kind and placement, and a bulk build for large collections."""

from retrieval.index.bulk import BulkReport, bulk_build
from retrieval.index.contract import VectorIndex
from retrieval.index.factory import PLACEMENTS, create_index, load_index, saved_shards, shard_count
from retrieval.index.faiss_index import FaissIndex
from retrieval.index.search import SearchParams
from retrieval.index.sharded import ShardedIndex

__all__ = [
    "PLACEMENTS",
    "BulkReport",
    "FaissIndex",
    "SearchParams",
    "ShardedIndex",
    "VectorIndex",
    "bulk_build",
    "create_index",
    "load_index",
    "saved_shards",
    "shard_count",
]
