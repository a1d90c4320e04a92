"""Shards in Ray actors (``placement="ray"``): one FaissIndex per actor, searched in parallel.

A :class:`~retrieval.index.sharded.ShardedIndex` whose shard handles are :class:`RayShard`:
each call is one ``actor.call.remote(op, ...)`` (the same :func:`~retrieval.index.sharded.shard_call`
operations a local shard runs), all shards are called before any result is awaited, and the
results are merged by the same code as local shards (:mod:`retrieval.index.merge`). So a
collection too big for one machine's memory is served by actors on several; the driver holds
no vectors.

Ray is an optional extra (``pip install 'imsearch[ray]'``) imported only here, on first use.
Either ``ray.init(...)`` has been called, or pass ``address=`` (``"auto"``, ``"ray://host:10001"``)
to connect. Saving and loading use the same directory layout as local shards (``sharded.json`` +
``shard-NNN/``); each actor reads and writes its own shard directory, so on a multi-machine
cluster that directory must be on a file system every node sees (NFS, a shared volume).

Actors ask for ``num_cpus=0`` by default (a shard is memory, not a CPU reservation; a 2-CPU
test instance can hold any number); pass ``actor_options`` (e.g. ``{"num_cpus": 1, "memory":
8 << 30, "scheduling_strategy": "SPREAD"}``) to place them on a real cluster.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from retrieval.errors import ImsearchError, VectorIndexError
from retrieval.index.faiss_index import FaissIndex
from retrieval.index.shard_layout import MAX_SHARDS, open_shard, read_layout
from retrieval.index.sharded import ShardedIndex, shard_call

logger = logging.getLogger(__name__)

__all__ = ["RayShard", "ShardActor", "create_ray_index", "load_ray_index", "require_ray"]

DEFAULT_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 4}


def require_ray(address: str | None = None) -> Any:
    """The ``ray`` module, connected: to ``address`` when given, else the already initialized instance."""
    try:
        import ray
    except ImportError as exc:
        raise VectorIndexError(
            "placement='ray' needs Ray: install the extra with pip install 'imsearch[ray]'"
        ) from exc
    if not ray.is_initialized():
        if address is None:
            raise VectorIndexError(
                "Ray is not initialized: call ray.init() (or ray.init(address=...)) first, "
                "or pass address='auto' / 'ray://HOST:10001' to connect to a running cluster"
            )
        ray.init(address=address)
    return ray


class ShardActor:
    """The body of one shard actor: a FaissIndex, new or loaded from a shard directory."""

    def __init__(
        self,
        dim: int,
        kind: str,
        *,
        gpu: bool | None = None,
        directory: str | None = None,
        shard: int = 0,
        layout: dict[str, Any] | None = None,
        mmap: bool = True,
    ) -> None:
        self.problem: str | None = None
        if directory is not None and layout is not None:
            self.index, self.problem = open_shard(Path(directory), shard, layout, mmap=mmap, gpu=gpu)
        else:
            self.index = FaissIndex(dim, kind=kind, gpu=gpu)

    def call(self, op: str, /, *args: Any, **kwargs: Any) -> Any:
        return shard_call(self.index, op, *args, **kwargs)

    def opened(self) -> tuple[int, str | None]:
        """(process id, why the shard started empty or None)."""
        return os.getpid(), self.problem


class _RayPending:
    def __init__(self, ray: Any, ref: Any, shard: int) -> None:
        self._ray, self._ref, self._shard = ray, ref, shard

    def result(self) -> Any:
        exceptions = self._ray.exceptions
        try:
            return self._ray.get(self._ref)
        except exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ImsearchError):
                raise cause from None
            raise
        except exceptions.RayActorError as exc:
            raise VectorIndexError(
                f"the Ray actor of shard {self._shard} died ({exc}); reopen the index with "
                "load_index(directory, placement='ray'); Collection.repair() refills what was not saved"
            ) from exc


class RayShard:
    """Handle of one shard actor (see :class:`~retrieval.index.sharded.ShardHandle`)."""

    placement = "ray"

    def __init__(self, ray: Any, actor: Any, shard: int) -> None:
        self._ray, self.actor, self.shard = ray, actor, shard

    def submit(self, op: str, /, *args: Any, **kwargs: Any) -> _RayPending:
        return _RayPending(self._ray, self.actor.call.remote(op, *args, **kwargs), self.shard)

    def pid(self) -> int:
        """Process id of the actor (on its node)."""
        return int(self._ray.get(self.actor.opened.remote())[0])

    def close(self) -> None:
        self._ray.kill(self.actor)


def _actor_class(ray: Any, actor_options: dict[str, Any] | None) -> Any:
    options = {**DEFAULT_ACTOR_OPTIONS, **(actor_options or {})}
    return ray.remote(ShardActor).options(**options)


def create_ray_index(
    dim: int,
    *,
    kind: str = "auto",
    shards: int = 2,
    gpu: bool | None = None,
    address: str | None = None,
    actor_options: dict[str, Any] | None = None,
) -> ShardedIndex:
    """A new, empty sharded index with one Ray actor per shard."""
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise VectorIndexError(f"shards must be an int between 1 and {MAX_SHARDS}, got {shards!r}")
    FaissIndex(dim, kind=kind)  # validate dim and kind here, not in an actor
    ray = require_ray(address)
    cls = _actor_class(ray, actor_options)
    handles = [RayShard(ray, cls.remote(dim, kind, gpu=gpu), i) for i in range(shards)]
    return ShardedIndex(dim, kind=kind, shards=handles)


def load_ray_index(
    directory: str | Path,
    *,
    mmap: bool = True,
    gpu: bool | None = None,
    address: str | None = None,
    actor_options: dict[str, Any] | None = None,
) -> ShardedIndex:
    """Open a saved sharded index (local or Ray, same layout) with one Ray actor per shard;
    a missing or corrupt shard starts empty (logged) for ``Collection.repair`` to refill."""
    path = Path(directory).resolve()
    layout = read_layout(path)
    ray = require_ray(address)
    cls = _actor_class(ray, actor_options)
    actors = [
        cls.remote(layout["dim"], layout["kind"], gpu=gpu, directory=str(path), shard=i, layout=layout, mmap=mmap)
        for i in range(layout["shards"])
    ]
    handles = [RayShard(ray, actor, i) for i, actor in enumerate(actors)]
    try:
        for _, problem in ray.get([a.opened.remote() for a in actors]):
            if problem is not None:
                logger.warning("%s: starting it empty, to be refilled from the catalog", problem)
    except Exception:
        for h in handles:
            h.close()
        raise
    index = ShardedIndex(layout["dim"], kind=layout["kind"], shards=handles)
    index.model_info = layout["model"]
    return index
