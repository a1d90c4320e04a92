"""The collection of ``bench.api``: built once (real photos + synthetic vectors), and the in-process reference.

See ``bench/api.py`` for what is built and why; this module builds it, can rebuild its
image index in another kind, and times the same searches in-process (no HTTP) next to a
brute-force numpy scan, for the ratios the benchmark prints.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def build(data_dir: Path, n_real: int, n_vectors: int, batch: int = 2000) -> None:
    from retrieval.collection import Collection, IndexedImage
    from retrieval.ingest import IndexOptions, LocalIngest
    from retrieval.models.descriptor import DescriptorModel
    from retrieval.store import catalog

    marker = data_dir / "bench.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"real": n_real, "vectors": n_vectors}:
        print(f"reusing the collection in {data_dir}")
        return
    paths = sorted(SHARED.glob("caltech101-half/*/*.jpg"))
    real = [paths[int(i * len(paths) / n_real)] for i in range(n_real)]
    collection = Collection.open(data_dir, model=DescriptorModel.create())
    try:
        t0 = time.perf_counter()
        summary = LocalIngest.over(collection, options=IndexOptions(progress=False)).run([str(p) for p in real])
        print(f"indexed {summary.indexed} real photos in {time.perf_counter() - t0:.0f} s")
        ids = collection.read(catalog.vector_ids, space="image")
        base = collection.read(catalog.get_vectors, space="image", ids=ids)
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        start = collection.count("image")
        for first in range(start, n_vectors, batch):
            count = min(batch, n_vectors - first)
            vecs = base[rng.integers(0, len(base), count)] + rng.normal(0, 0.02, (count, base.shape[1]))
            vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
            items = [
                IndexedImage(
                    sha256=hashlib.sha256(f"synthetic-{first + i}".encode()).hexdigest(),
                    size_bytes=50_000,
                    width=640,
                    height=480,
                    format="JPEG",
                    descriptor=vecs[i],
                )
                for i in range(count)
            ]
            collection.write(items)
        collection.save()
        print(f"wrote {n_vectors - start} synthetic vectors in {time.perf_counter() - t0:.0f} s")
    finally:
        collection.close()
    marker.write_text(json.dumps({"real": n_real, "vectors": n_vectors}))


def ensure_index_kind(data_dir: Path, kind: str) -> None:
    """Rebuild the image index from the catalog when it is of another kind (auto, ivfpq, hnsw...)."""
    import shutil

    from retrieval.collection import Collection

    collection = Collection.open(data_dir, writable=False)
    current = collection.index_info()["image"]["kind"]
    collection.close()
    if current == kind:
        return
    t0 = time.perf_counter()
    shutil.rmtree(data_dir / "index")
    collection = Collection.open(data_dir, index_kind=kind)  # repair() rebuilds from the catalog, then saves
    factory = collection.index_info()["image"]["factory"]
    print(f"rebuilt the index as {kind!r} ({factory}) in {time.perf_counter() - t0:.0f} s")
    collection.close()


def real_photos(data_dir: Path) -> tuple[list[int], list[int], list[bytes]]:
    """(ids of real photos, a sample of all ids, bytes of some real photos for uploads)."""
    from retrieval.search import SearchEngine

    engine = SearchEngine.open(data_dir)
    try:
        ids = engine.collection.index_ids("image")
        real = [r for batch in engine.iter_images() for r in batch if r.path]
    finally:
        engine.close()
    rng = random.Random(1)
    uploads = [Path(r.path).read_bytes() for r in rng.sample(real, min(40, len(real))) if r.path]
    return [r.id for r in real], [int(i) for i in rng.sample(list(ids), min(5000, len(ids)))], uploads


def reference(data_dir: Path, sample_ids: list[int], uploads: list[bytes], *, model_engine: str = "auto"
              ) -> dict[str, float]:
    """The same searches in-process (no HTTP; ``model_engine`` runs the network, as the server's),
    brute-force numpy by id, and decode times alone."""
    from retrieval.imageio import decode_image
    from retrieval.search import Query, SearchEngine

    engine = SearchEngine.open(data_dir, engine=model_engine)
    try:
        ids = engine.collection.index_ids("image")
        matrix = engine.collection.reconstruct("image", ids)
        by_id, brute, up, decode = [], [], [], []
        for image_id in sample_ids[:20]:  # warm-up: caches, lazy kernels
            engine.search(Query(image_id=image_id), k=10)
        for data in uploads[:20]:
            engine.search(Query(image=data), k=10)
        for image_id in sample_ids[:200]:
            t0 = time.perf_counter()
            engine.search(Query(image_id=image_id), k=10, exclude_query=True)
            by_id.append(time.perf_counter() - t0)
        for image_id in sample_ids[:200]:  # apart: its 0.5 GB scans would evict the index from the caches
            t0 = time.perf_counter()
            q = matrix[np.searchsorted(ids, image_id)]
            scores = matrix @ q
            top = np.argpartition(-scores, 11)[:11]
            _ = ids[top[np.argsort(-scores[top])]]
            brute.append(time.perf_counter() - t0)
        need = math.ceil(engine.collection.model.meta.max_side * max(engine.collection.model.meta.scales))
        for data in uploads[:20]:
            t0 = time.perf_counter()
            engine.search(Query(image=data), k=10)
            up.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            decode_image(data, max_side=need)
            decode.append(time.perf_counter() - t0)
    finally:
        engine.close()
    ms = lambda xs: 1e3 * float(np.median(xs))  # noqa: E731
    return {"by_id_ms": ms(by_id), "brute_ms": ms(brute), "upload_ms": ms(up), "decode_ms": ms(decode)}
