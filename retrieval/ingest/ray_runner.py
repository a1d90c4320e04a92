"""The Ray runner: the map step on a Ray Data actor pool, results streamed back to the one writer.

The driver (this process) walks the folders (or reads a manifest of paths), drops what is
already indexed or known to fail (:meth:`RunState.plan`, exactly as the local pipeline), and
turns the rest into a ``ray.data`` dataset of ``(key, path, size, mtime_ns)`` rows.
``map_batches`` runs :class:`_DescribeActor` (a :class:`~retrieval.ingest.describe.Describer`
loaded once per actor, ``num_gpus`` when asked) over batches of paths: each worker reads,
hashes, decodes and describes the files itself, so the files must be readable at the same
paths on every node (a shared filesystem). Described records stream back in bounded
batches (``iter_batches``) to :class:`~retrieval.ingest.writer.BatchWriter`, which writes
them to the collection, records the content already indexed as files of that content
(dedupe by sha256) and every per-file failure by name and reason.

Crash semantics are the local pipeline's: Ray restarts an actor that dies and retries its
batch; writes are upserts keyed by content hash, so a retried batch is written twice to no
effect; a killed driver leaves only whole committed batches, and a re-run continues.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.collection import Collection, model_path
from retrieval.errors import ImsearchError
from retrieval.ingest.describe import Described, Describer, SourceItem
from retrieval.ingest.local import make_progress, scan_batches
from retrieval.ingest.scan import FileEntry, read_manifest
from retrieval.ingest.settings import IngestSettings
from retrieval.ingest.summary import IndexOptions, IndexSummary
from retrieval.ingest.writer import BatchWriter, RunState
from retrieval.store.catalog import FileInfo
from retrieval.store.keys import image_key

logger = logging.getLogger(__name__)


def _require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImsearchError(
            "the Ray engine needs the [ray] extra: pip install 'imsearch[ray]' (or `make setup`)"
        ) from None
    return ray


def connect(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Join the Ray cluster at ``address``, or start a local instance (no dashboard) when
    ``address`` is None and none runs in this process. Returns whether this call started it."""
    ray = _require_ray()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        logger.info("joining the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:
        logger.info("starting a local Ray instance")
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


class _DescribeActor:
    """One map-step worker: the model (and annotators) loaded once, in the constructor."""

    def __init__(self, settings: IngestSettings, model: Any) -> None:
        """``model``: the model file's bytes in Ray's object store (an ObjectRef), fetched once."""
        data = model if isinstance(model, bytes) else _require_ray().get(model)
        self._dir = tempfile.mkdtemp(prefix="imsearch-ray-")
        model_file = Path(self._dir) / "model.pt"
        model_file.write_bytes(data)
        self.describer = Describer(settings.with_(model=str(model_file)))
        self.describer.warm_up()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [
            SourceItem(int(k), path=str(p), size_bytes=int(s), mtime_ns=int(m))
            for k, p, s, m in zip(batch["key"], batch["path"], batch["size"], batch["mtime_ns"], strict=True)
        ]
        out = self.describer(items)
        payload = np.empty(len(out), dtype=object)
        for i, d in enumerate(out):
            payload[i] = pickle.dumps(d, protocol=pickle.HIGHEST_PROTOCOL)
        return {"key": np.asarray(batch["key"], dtype=np.int64), "payload": payload}


class RayIngest:
    """Index folders (or a manifest) into ``collection`` with the map step on a Ray actor pool.

    ``workers``: actors (one model each); ``gpus_per_worker``: ``num_gpus`` of each actor (0: CPU);
    ``cpus_per_worker``: ``num_cpus`` of each actor; ``batch_size``: files per map batch.
    Call :func:`connect` first, or let :meth:`run` start a local instance.
    """

    def __init__(
        self,
        collection: Collection,
        settings: IngestSettings,
        options: IndexOptions | None = None,
        *,
        workers: int = 1,
        gpus_per_worker: float = 0.0,
        cpus_per_worker: float = 1.0,
        batch_size: int = 16,
    ) -> None:
        if workers < 1:
            raise ImsearchError(f"workers must be >= 1, got {workers}")
        if gpus_per_worker < 0 or cpus_per_worker <= 0:
            raise ImsearchError("gpus_per_worker must be >= 0 and cpus_per_worker > 0")
        if batch_size < 1:
            raise ImsearchError(f"batch_size must be >= 1, got {batch_size}")
        self.collection = collection
        self.settings = settings.with_(model=None)
        self.options = options or IndexOptions()
        self.workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        self.batch_size = batch_size
        self._stop = threading.Event()
        self._known: set[str] = set()
        self.state = RunState(collection, self.options, make_progress(IndexOptions(progress=False), desc="index",
                                                                       log=logger))

    @property
    def summary(self) -> IndexSummary:
        return self.state.summary

    def stop(self) -> None:
        """Stop taking results; what was written stays (run again to continue)."""
        self._stop.set()

    def run(
        self,
        roots: Sequence[str | os.PathLike[str]] = (),
        *,
        manifest: str | os.PathLike[str] | None = None,
    ) -> IndexSummary:
        t0 = time.perf_counter()
        ray = _require_ray()
        if not ray.is_initialized():
            connect(None)
        progress = make_progress(self.options, desc="index (ray)", log=logger)
        state = self.state = RunState(self.collection, self.options, progress)
        try:
            entries = self._plan(roots, manifest)
            summary = self._describe_and_write(entries)
        finally:
            state.close()
            progress.close()
        if self.options.prune and not summary.interrupted and roots:
            summary.pruned = state.prune(roots)
        self.collection.save()
        summary.seconds = time.perf_counter() - t0
        return summary

    # ------------------------------------------------------------------ driver side
    def _plan(self, roots: Sequence[str | os.PathLike[str]], manifest: str | os.PathLike[str] | None
              ) -> list[FileEntry]:
        state = self.state
        todo: list[FileEntry] = []
        follow = self.settings.follow_symlinks
        batches: Iterator[list[FileEntry]] = iter(())
        if roots:
            batches = scan_batches(roots, state, follow_symlinks=follow, stop=self._stop)
        for batch in batches:
            planned, known = state.plan(batch)
            todo.extend(planned)
            self._known |= known
        if manifest is not None:
            listed = read_manifest(manifest)
            entries: list[FileEntry] = []
            for raw in listed:
                path = os.path.abspath(raw)
                try:
                    st = os.stat(path) if follow else os.lstat(path)
                except OSError as exc:
                    state.found(1)
                    state.fail(path, f"cannot access: {exc.strerror or exc}", 0, 0)
                    continue
                entries.append(FileEntry(path, st.st_size, st.st_mtime_ns))
            state.found(len(entries))
            for start in range(0, len(entries), 256):
                planned, known = state.plan(entries[start : start + 256])
                todo.extend(planned)
                self._known |= known
        return todo

    def _describe_and_write(self, entries: list[FileEntry]) -> IndexSummary:
        state = self.state
        if not entries:
            return state.summary
        ray = _require_ray()
        rd = __import__("ray.data").data

        model_file = model_path(self.collection.root, self.collection.model.fingerprint)
        if not model_file.is_file():
            self.collection.model.save(model_file)
        rows = [{"key": i, "path": e.path, "size": e.size, "mtime_ns": e.mtime_ns} for i, e in enumerate(entries)]
        blocks = max(self.workers * 4, min(len(rows) // max(self.batch_size, 1), 1000), 1)
        ds = rd.from_items(rows, override_num_blocks=min(blocks, len(rows)))
        remote: dict[str, Any] = {"num_cpus": self.cpus_per_worker}
        if self.gpus_per_worker:
            remote["num_gpus"] = self.gpus_per_worker
        device = "cuda" if self.gpus_per_worker else "cpu"
        settings = self.settings.with_(device=device if self.settings.device == "auto" else self.settings.device)
        described = ds.map_batches(
            _DescribeActor,
            fn_constructor_kwargs={"settings": settings, "model": ray.put(model_file.read_bytes())},
            batch_size=self.batch_size,
            batch_format="numpy",
            compute=rd.ActorPoolStrategy(size=self.workers),
            **remote,
        )
        writer = BatchWriter(state)
        logger.info("describing %d files on %d Ray workers", len(entries), self.workers)
        for batch in described.iter_batches(batch_size=self.options.commit_every, batch_format="numpy"):
            records = [pickle.loads(p) for p in batch["payload"]]
            self._write(writer, entries, records)
            if self._stop.is_set():
                state.summary.interrupted = True
                break
        writer.flush()
        return state.summary

    def _write(self, writer: BatchWriter, entries: list[FileEntry], records: list[Described]) -> None:
        """Content already in the catalog becomes a file of that image (no second descriptor)."""
        ok = [d for d in records if d.image is not None]
        present = self.state.present([d.image.image_id for d in ok if d.image is not None])
        known_content: list[FileInfo] = []
        for d in records:
            entry = entries[int(d.key)]  # type: ignore[call-overload]
            image = d.image
            if image is not None and image.image_id in present:
                known_content.append(
                    FileInfo(path=entry.path, image_id=image_key(image.sha256), size_bytes=image.size_bytes,
                             mtime_ns=int(image.mtime_ns or 0))
                )
                continue
            writer.add(d, entry=entry)
        writer.add_known_content(known_content, known_paths=self._known)
