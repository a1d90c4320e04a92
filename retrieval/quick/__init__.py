"""Queries without torch: the collection's network run by onnxruntime, its head in numpy.

``imsearch search`` spends most of its time starting up (``import torch`` alone takes ~2 s on
the 2-core CI machine). This package serves a query by example with numpy, Pillow,
onnxruntime, FAISS and the stdlib ``sqlite3`` only:

* :mod:`.export` (imports torch; run once per model): writes ``models/<fp>.onnx`` (the
  BatchNorm-folded backbone) and ``models/<fp>.head.npz`` (pooling, whitening, metadata) next
  to the collection's ``models/<fp>.pt``, after checking them against the torch model.
* :mod:`.head`: pooling (R-MAC, GeM, MAC, SPoC), whitening and L2 in numpy, the twin of
  :mod:`retrieval.models.pooling` (tested against it).
* :mod:`.model`: decode -> resize per scale -> normalize -> onnxruntime -> numpy head.
* :mod:`.catalog`: the few read-only catalog queries a search needs, on SQLite.
* :mod:`.search`: the query path; raises :class:`QuickUnavailableError` whenever it cannot serve a
  query exactly as :class:`retrieval.search.SearchEngine` would, and the caller falls back.

Nothing here imports torch, nor SQLAlchemy or Alembic unless a label/path filter is resolved
(a test checks it in a subprocess).
"""

from __future__ import annotations

from retrieval.errors import ImsearchError


class QuickUnavailableError(ImsearchError):
    """The torch-free path cannot serve this query (the reason says why); use the normal engine."""
