"""A child process that writes to a collection and is killed (SIGKILL) by the crash tests.

    python -m tests.retrieval.crash_writer ROOT DB_URL MODE N

MODE ``catalog-first``: the normal write path (catalog commit, then the in-memory index),
printing ``COMMITTED <k>`` after each batch's commit and ``SAVED <k>`` after each index
save, so the parent can kill it between the two. MODE ``index-first``: the other order,
as a crash in the middle of a remove or a save could leave it: vectors are added to the
FAISS index and saved, ``INDEX-SAVED`` printed, and the catalog write never happens.
"""

from __future__ import annotations

import sys
import time

from retrieval.collection import Collection
from tests.retrieval.collection_data import synthetic_images, tiny_model


def main() -> None:
    root, db_url, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    collection = Collection.open(root, db_url=db_url, model=tiny_model())
    images = synthetic_images(n, prefix="crash")
    if mode == "catalog-first":
        for k in range(0, n, 10):
            collection.write(images[k : k + 10])
            print(f"COMMITTED {k + 10}", flush=True)
            time.sleep(0.05)
            collection.save()
            print(f"SAVED {k + 10}", flush=True)
    elif mode == "index-first":
        import numpy as np

        ids = np.array([im.image_id for im in images], dtype=np.int64)
        collection._indexes["image"].add(ids, np.stack([im.descriptor for im in images]))
        collection._indexes["image"].save(collection.index_dir("image"))
        print("INDEX-SAVED", flush=True)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print("DONE", flush=True)
    time.sleep(60)  # wait to be killed


if __name__ == "__main__":
    main()
