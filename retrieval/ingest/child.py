"""An index job's map step in a child process, so the job's memory is not the server's.

:class:`ChildDescriber` stands in for :class:`~retrieval.ingest.describe.Describer` inside
:class:`~retrieval.ingest.local.LocalIngest`: the server keeps scanning, planning, reading and
hashing the files, the catalog and the one writer; a child process started with ``spawn``
(never ``fork`` of a threaded server) loads the collection's model file and describes what it
is sent (decode, annotators, network), at its own CPU priority (``niceness``), with its own
OpenMP team (``threads``) and allocator settings. Its model, decode buffers and activations
live in the child; when the job ends the child exits and all of it goes back to the system.

The protocol over one duplex pipe is pull-based, so memory stays bounded and nothing can
deadlock: the child asks for one item when its pipeline wants one (``want``), the server
answers with the next item (its bytes as already read and hashed, under a sequence number)
or ``end``; the child sends every result as soon as it is done (``result``), then ``done``.
Searches still come first: the server's foreground count lives in shared memory
(:class:`YieldTo`) and the child's network checks it before each layer (:class:`SharedPause`,
the rule of :class:`api.compute.ForegroundGate`).

A child that dies (killed, out of memory) fails the job with :class:`ChildDiedError`; the
results it sent before were handed to the writer and are kept, so starting the job again
continues where it stopped. :meth:`ChildDescriber.stop` (cancel, shutdown) ends the child at
once: what it had not sent yet is described again by the next run.

Importing this module loads neither torch nor the catalog: the child imports them after it
has set its thread count.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from retrieval.errors import ImsearchError
from retrieval.ingest.settings import IngestSettings

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from retrieval.ingest.describe import Described, SourceItem

logger = logging.getLogger(__name__)

#: where an index job describes images: a child process, or a thread of the server
Isolation = Literal["process", "thread"]
START_METHOD = "spawn"  # a fresh interpreter: forking a threaded server (OpenMP, SQLite, locks) is unsafe
POLL_S = 0.5  # how often the server checks a silent child is still alive
PAUSE_POLL_S = 0.001  # how often a paused child looks whether the searches are done
STOP_GRACE_S = 5.0  # after SIGTERM, how long a child gets before SIGKILL


class ChildDiedError(ImsearchError):
    """The describing child process ended without finishing its work."""


@dataclass(frozen=True)
class YieldTo:
    """How a child's network yields the CPU to the server's foreground work (searches).

    ``busy``: a shared ``c_int`` (``multiprocessing`` ``RawValue``) the server keeps equal to its
    foreground work in flight; ``max_wait_s`` / ``min_run_s``: the rule of
    :class:`api.compute.ForegroundGate` (wait at most this long in a row, then run this long)."""

    busy: Any
    max_wait_s: float
    min_run_s: float


class SharedPause:
    """The child's side of :class:`YieldTo`: :meth:`pause_point` before each layer of its network."""

    def __init__(self, spec: YieldTo) -> None:
        self.spec = spec
        self._free_until = 0.0
        #: seconds spent waiting, and how many waits
        self.waited_s = 0.0
        self.pauses = 0

    def pause_point(self) -> None:
        busy = self.spec.busy
        if busy.value <= 0:  # the common case: one read of shared memory
            return
        start = time.monotonic()
        if start < self._free_until:
            return
        deadline = start + self.spec.max_wait_s
        while busy.value > 0:
            now = time.monotonic()
            if now >= deadline:
                self._free_until = now + self.spec.min_run_s
                break
            time.sleep(PAUSE_POLL_S)
        self.waited_s += time.monotonic() - start
        self.pauses += 1


@dataclass(frozen=True)
class ChildOptions:
    """How the child runs: ``threads`` its torch threads (None: torch's default), ``niceness`` its
    CPU niceness (absolute: a child spawned from an already lowered thread starts there),
    ``yield_to`` the server's foreground count (None: never pause), ``malloc_arena_max`` glibc
    arenas (0: glibc's default), ``log_levels`` of its loggers (its log lines go to the server's
    stderr; :func:`log_levels` copies this process's)."""

    threads: int | None = None
    niceness: int = 0
    yield_to: YieldTo | None = None
    malloc_arena_max: int = 0
    log_levels: tuple[tuple[str, int], ...] = (("", logging.INFO),)


def log_levels() -> tuple[tuple[str, int], ...]:
    """This process's root log level and every level set on a named logger, for a child to copy."""
    named = [
        (name, obj.level)
        for name, obj in logging.root.manager.loggerDict.items()
        if isinstance(obj, logging.Logger) and obj.level != logging.NOTSET
    ]
    return (("", logging.getLogger().getEffectiveLevel()), *sorted(named))


@dataclass
class ChildStats:
    """What :class:`LocalIngest` reads of an extractor (``stats``), filled from the child's reports."""

    stats: dict[str, float] = field(
        default_factory=lambda: {"decode_s": 0.0, "forward_s": 0.0, "images": 0, "batches": 0}
    )


class ChildDescriber:
    """The map step of one index job in a child process (see the module docstring).

    ``settings.model``: the collection's model file (what the child loads); ``fingerprint``:
    the collection's model, checked in the child. Offers what LocalIngest uses of a
    :class:`Describer`: ``settings``, ``extractor.stats`` and :meth:`iter_describe`."""

    def __init__(self, settings: IngestSettings, *, fingerprint: str, options: ChildOptions | None = None) -> None:
        if settings.model is None or not Path(settings.model).is_file():
            raise ImsearchError(
                f"the describing process needs the collection's model file; {settings.model} is not one"
            )
        self.settings = settings
        self.fingerprint = fingerprint
        self.options = options or ChildOptions()
        self.extractor = ChildStats()
        #: the child's figures at its end: peak RSS (MiB), seconds paused for searches, pauses
        self.peak_rss_mib = 0.0
        self.paused_s = 0.0
        self.pauses = 0
        self._process: BaseProcess | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The running child's process id (None before it starts and after it ended)."""
        with self._lock:
            proc = self._process
            return proc.pid if proc is not None and proc.is_alive() else None

    def stop(self) -> None:
        """End the child now (cancel, shutdown); :meth:`iter_describe` then returns quietly."""
        self._stopping.set()
        with self._lock:
            proc = self._process
            if proc is not None and proc.is_alive():
                proc.terminate()

    # ------------------------------------------------------------------ the server's side
    def iter_describe(self, items: Iterable[SourceItem]) -> Iterator[Described]:
        """Stream the child's results for ``items`` (not in input order), keys as given."""
        started = self._start()
        if started is None:  # stopped before it started
            return
        conn, proc = started
        t0 = time.monotonic()
        keys: dict[int, Hashable] = {}
        next_seq = 0
        source = iter(items)
        finished = False
        try:
            while True:  # a slow start (a busy machine) is no failure: a job can always be cancelled
                msg = self._receive(conn, proc)
                if msg is None:  # stopped
                    return
                kind = msg[0]
                if kind == "want":
                    item = next(source, None)
                    if item is None:
                        self._send(conn, proc, ("end",))
                        continue
                    keys[next_seq] = item.key
                    self._send(conn, proc, ("item", replace(item, key=next_seq)))
                    next_seq += 1
                elif kind == "result":
                    described, stats = msg[1], msg[2]
                    self.extractor.stats.update(stats)
                    yield replace(described, key=keys.pop(described.key))
                elif kind == "done":
                    finished = True
                    self._final(msg[1])
                    return
                elif kind == "error":
                    raise ImsearchError(f"the index job's describing process failed: {msg[1]}")
                elif kind == "ready":
                    logger.info("index job: describing process %d ready in %.1f s", msg[1], time.monotonic() - t0)
                else:
                    raise ImsearchError(f"internal error: the describing process sent {kind!r}")
        finally:
            self._close(conn, proc, graceful=finished)

    def _start(self) -> tuple[Connection, BaseProcess] | None:
        ctx: Any = multiprocessing.get_context(START_METHOD)  # typeshed: BaseContext lacks Process
        ours, theirs = ctx.Pipe(duplex=True)
        proc = ctx.Process(
            target=child_main,
            args=(theirs, self.settings, self.fingerprint, self.options),
            name="imsearch-job-describe",
            daemon=True,  # never outlives the server
        )
        with self._lock:
            if self._stopping.is_set():
                ours.close()
                theirs.close()
                return None
            proc.start()
            self._process = proc
        theirs.close()  # the child's end lives in the child: its death is our end-of-file
        logger.info("index job: describing in child process %d", proc.pid)
        return ours, proc

    def _receive(self, conn: Connection, proc: BaseProcess) -> tuple[Any, ...] | None:
        """The child's next message; None when stopped; ChildDiedError when it died."""
        while True:
            try:
                if conn.poll(POLL_S):
                    msg: tuple[Any, ...] = conn.recv()
                    return msg
            except (EOFError, OSError):
                break
            if self._stopping.is_set():
                return None
            if not proc.is_alive() and not conn.poll(0):
                break
        if self._stopping.is_set():
            return None
        raise ChildDiedError(_death(proc))

    def _send(self, conn: Connection, proc: BaseProcess, msg: tuple[Any, ...]) -> None:
        try:
            conn.send(msg)
        except (BrokenPipeError, EOFError, OSError):
            if self._stopping.is_set():
                return
            raise ChildDiedError(_death(proc)) from None

    def _final(self, report: dict[str, float]) -> None:
        self.peak_rss_mib = float(report.get("peak_rss_mib", 0.0))
        self.paused_s = float(report.get("paused_s", 0.0))
        self.pauses = int(report.get("pauses", 0))
        logger.info(
            "index job: describing process peak RSS %.0f MiB, paused %.1f s (%d times) for searches",
            self.peak_rss_mib, self.paused_s, self.pauses,
        )

    def _close(self, conn: Connection, proc: BaseProcess, *, graceful: bool) -> None:
        """A child that sent ``done`` exits by itself; any other is ended now (SIGTERM, then SIGKILL)."""
        if not graceful and proc.is_alive():
            proc.terminate()
        proc.join(STOP_GRACE_S)
        if proc.is_alive():
            logger.warning("describing process %d did not exit: killing it", proc.pid)
            proc.kill()
            proc.join()
        conn.close()
        with self._lock:
            self._process = None
            proc.close()


def _death(proc: BaseProcess) -> str:
    proc.join(STOP_GRACE_S)
    code = proc.exitcode
    if code is None:
        how = "stopped answering"
    elif code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        how = f"was killed by signal {name}"
        if -code == signal.SIGKILL:
            how += " (perhaps by the out-of-memory killer: see the system log)"
    else:
        how = f"exited with status {code} (see the server log)"
    return (
        f"the index job's describing process (pid {proc.pid}) {how}; the images written before it stopped "
        "are kept: start the job again to continue where it stopped"
    )


# ---------------------------------------------------------------------------- the child's side


def lower_priority(nice: int) -> None:
    """Lower this thread's CPU priority by ``nice`` (Linux: threads it starts inherit it)."""
    if nice > 0 and hasattr(os, "getpriority"):
        set_niceness(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + nice)


def process_niceness() -> int:
    """This process's niceness (its main thread's: on Linux each thread has its own)."""
    return os.getpriority(os.PRIO_PROCESS, os.getpid()) if hasattr(os, "getpriority") else 0


def set_niceness(target: int) -> None:
    """Raise this thread's niceness to ``target`` (at most 19); never lowers it."""
    if not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        if min(19, target) > os.getpriority(os.PRIO_PROCESS, tid):
            os.setpriority(os.PRIO_PROCESS, tid, min(19, target))
    except OSError as exc:
        logger.info("could not lower the index job's priority: %s", exc)


class _StoppedError(Exception):
    """The server sent ``stop`` or went away."""


def child_main(conn: Connection, settings: IngestSettings, fingerprint: str, options: ChildOptions) -> None:
    """The child process: set itself up, describe what the server sends, report, exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's: it stops us
    logging.basicConfig(format="%(asctime)s %(levelname)s imsearch-job[%(process)d] %(name)s: %(message)s")
    for name, level in options.log_levels:
        logging.getLogger(name or None).setLevel(level)
    try:
        describer, pause = _set_up(settings, fingerprint, options)
        conn.send(("ready", os.getpid()))
        for described in describer.iter_describe(_requests(conn)):
            conn.send(("result", described, dict(describer.extractor.stats)))
        conn.send(("done", {
            "peak_rss_mib": vm_hwm_mib(),
            "paused_s": pause.waited_s if pause is not None else 0.0,
            "pauses": pause.pauses if pause is not None else 0,
        }))
    except (_StoppedError, EOFError, BrokenPipeError):
        return
    except Exception as exc:  # reported to the server, which fails the job with it
        logger.exception("the describing process failed")
        message = str(exc) if isinstance(exc, ImsearchError) else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError):
            conn.send(("error", message))
    finally:
        conn.close()


def _set_up(settings: IngestSettings, fingerprint: str, options: ChildOptions) -> tuple[Any, SharedPause | None]:
    if options.threads is not None:  # before torch is imported: its OpenMP pool is sized once
        os.environ["OMP_NUM_THREADS"] = str(options.threads)
    from retrieval.runtime import tune_malloc

    set_niceness(options.niceness)  # before any thread starts: they all inherit it
    tune_malloc(arena_max=options.malloc_arena_max)  # as the imsearch command: flat memory while streaming
    import torch

    from retrieval.ingest.describe import Describer

    if options.threads is not None:
        torch.set_num_threads(options.threads)
    spec = options.yield_to
    pause = SharedPause(spec) if spec is not None and spec.max_wait_s > 0 else None
    describer = Describer(settings, pause=pause.pause_point if pause is not None else None)
    if describer.model.fingerprint != fingerprint:
        raise ImsearchError(
            f"{settings.model} is not the collection's model ({fingerprint[:16]}); restore the collection's "
            "models folder"
        )
    describer.warm_up()
    return describer, pause


def _requests(conn: Connection) -> Iterator[SourceItem]:
    while True:
        conn.send(("want",))
        msg = conn.recv()
        if msg[0] == "item":
            yield msg[1]
        elif msg[0] == "end":
            return
        else:
            raise _StoppedError()


def vm_hwm_mib(pid: int | str = "self") -> float:
    """Peak resident size (``VmHWM``) of a live process in MiB; 0.0 where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0
