"""Progress of a long job, shown as a bar on a terminal and as periodic log lines elsewhere.

Every long job (indexing, re-indexing, training, evaluation, API jobs) reports through one
:class:`Progress`. On a terminal (stderr is a TTY) it draws a tqdm bar. Under nohup,
systemd, Docker or CI (stderr not a TTY) it logs one line every ``interval_s`` seconds
(10 by default; ``$IMSEARCH_PROGRESS_INTERVAL_S`` overrides it) through the caller's
logger, and a summary line when the job ends::

    index: 1200/4487 images (26.7%), 10.6 images/s, ETA 5m10s, 3 failed, duplicates 12
    index: done 4487/4487 images in 7m03s, 10.6 images/s, 3 failed, duplicates 12

Use it as a context manager around the work; every method is thread-safe::

    with Progress(total=len(paths), desc="index", unit="images", logger=logger) as progress:
        for batch in batches:
            ...
            progress.update(len(batch), failed=n_bad, duplicates=n_dup)   # counters are summed
            progress.set_status(stage="writing")                          # shown as given, next line
        progress.set_total(more_found)                                     # the total may grow

``update`` adds to ``done`` (and to ``failed`` and any extra counters); ``set_status`` shows
values that are replaced, not summed (a loss, a stage name). A line is emitted from within
``update``/``set_total`` when ``interval_s`` has passed since the last one, so a job that calls
``update`` at least every few seconds logs on time. ``snapshot()`` gives the
same figures as a :class:`ProgressSnapshot` (for an API job's status row). Nothing is shown
when ``mode="off"``; the summary is logged in ``bar`` and ``log`` modes alike.

Jobs over images use ``unit="images"`` (``tests/test_progress.py`` runs ``imsearch index`` with
stderr to a file and looks for ``<done>/<total> images (..%), <rate> images/s, ETA ...`` lines).

``rate`` is ``done`` per second since the start, ``ETA`` is what is left at that rate (``?``
without a total or before the first item). ``clock`` (a monotonic seconds function) is
injectable so that tests can drive time.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TextIO

ENV_INTERVAL = "IMSEARCH_PROGRESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 10.0
Mode = Literal["auto", "bar", "log", "off"]
MODES = ("auto", "bar", "log", "off")


def default_interval() -> float:
    """Seconds between progress lines: ``$IMSEARCH_PROGRESS_INTERVAL_S`` when set, else 10."""
    raw = os.environ.get(ENV_INTERVAL)
    if raw is None or not raw.strip():
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"${ENV_INTERVAL} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"${ENV_INTERVAL} must be a non-negative number of seconds, got {raw!r}")
    return value


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``, ``3725`` -> ``1h02m05s``, ``9.4`` -> ``9s``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


@dataclass(frozen=True)
class ProgressSnapshot:
    """The figures of a :class:`Progress` at one moment."""

    done: int
    total: int | None
    failed: int
    elapsed_s: float
    counters: dict[str, int] = field(default_factory=dict)
    status: dict[str, object] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Items per second since the start (0 before any time passed)."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate; None without a total or a rate."""
        if self.total is None or self.rate <= 0:
            return None
        return max(self.total - self.done, 0) / self.rate


class Progress:
    """Progress of one job: a tqdm bar on a TTY, log lines every ``interval_s`` otherwise.

    Args:
        total: items expected (None: unknown yet; :meth:`set_total` sets it later).
        desc: the job's name, first on every line (``index``, ``epoch 3``).
        unit: what an item is, plural (``images``, ``batches``); the rate reads ``<unit>/s``.
        logger: where lines go (default: the logger of the calling module).
        interval_s: seconds between lines in log mode (default: :func:`default_interval`).
        mode: ``auto`` (bar when ``stream`` is a TTY, else log), ``bar``, ``log`` or ``off``.
        clock: monotonic time in seconds (tests inject a fake one).
        stream: the terminal of the bar and of the TTY test (default: ``sys.stderr``).
        level: the logging level of the lines (default INFO).
    """

    def __init__(
        self,
        total: int | None = None,
        *,
        desc: str = "",
        unit: str = "items",
        logger: logging.Logger | None = None,
        interval_s: float | None = None,
        mode: Mode = "auto",
        clock: Callable[[], float] = time.monotonic,
        stream: TextIO | None = None,
        level: int = logging.INFO,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r}; use one of {', '.join(MODES)}")
        if total is not None and total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.desc = desc
        self.unit = unit
        self.logger = logger if logger is not None else _caller_logger()
        self.interval_s = default_interval() if interval_s is None else float(interval_s)
        if self.interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        self.level = level
        self._clock = clock
        self._stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if _isatty(self._stream) else "log"
        self.mode: Mode = mode
        self._lock = threading.Lock()
        self._total = total
        self._done = 0
        self._failed = 0
        self._counters: dict[str, int] = {}
        self._status: dict[str, object] = {}
        self._start = clock()
        self._last_line = self._start
        self._closed = False
        self._bar: Any = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc or None, unit=unit, file=self._stream, dynamic_ncols=True,
                             smoothing=0.05, leave=False)

    # ------------------------------------------------------------------ reporting
    def update(self, n: int = 1, failed: int = 0, **counters: int) -> None:
        """``n`` more items done (failures included), ``failed`` of them failed; extra counters are summed."""
        with self._lock:
            self._done += int(n)
            self._failed += int(failed)
            for name, value in counters.items():
                self._counters[name] = self._counters.get(name, 0) + int(value)
            if self._bar is not None:
                self._bar.update(int(n))
                if failed or counters:
                    self._bar.set_postfix_str(self._extras(), refresh=False)
            self._maybe_log()

    def set_total(self, n: int) -> None:
        """The number of items expected (it may grow while a scan finds more)."""
        if n < 0:
            raise ValueError(f"total must be >= 0, got {n}")
        with self._lock:
            self._total = int(n)
            if self._bar is not None:
                self._bar.total = int(n)
                self._bar.refresh()
            self._maybe_log()

    def set_status(self, **values: object) -> None:
        """Values shown as given (replaced, not summed): ``loss=0.1234``, ``stage="write"``; they appear
        on the next line, so set them before the :meth:`update` that they describe."""
        with self._lock:
            self._status.update(values)
            if self._bar is not None:
                self._bar.set_postfix_str(self._extras())

    def snapshot(self) -> ProgressSnapshot:
        with self._lock:
            return self._snapshot()

    @property
    def done(self) -> int:
        return self._done

    @property
    def failed(self) -> int:
        return self._failed

    @property
    def total(self) -> int | None:
        return self._total

    # ------------------------------------------------------------------ life cycle
    def close(self, *, ok: bool = True) -> None:
        """Close the bar and log the summary line (``stopped`` instead of ``done`` when not ``ok``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._bar is not None:
                self._bar.close()
            if self.mode != "off":
                self.logger.log(self.level, "%s", self._summary_line(ok))

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(ok=exc_type is None)

    # ------------------------------------------------------------------ lines
    def line(self) -> str:
        """The periodic line for the current figures (what log mode emits)."""
        with self._lock:
            return self._progress_line(self._snapshot())

    def _snapshot(self) -> ProgressSnapshot:
        return ProgressSnapshot(
            self._done, self._total, self._failed, max(self._clock() - self._start, 0.0),
            dict(self._counters), dict(self._status),
        )

    def _maybe_log(self) -> None:
        if self.mode != "log" or self._closed:
            return
        now = self._clock()
        if now - self._last_line < self.interval_s:
            return
        self._last_line = now
        self.logger.log(self.level, "%s", self._progress_line(self._snapshot()))

    def _extras(self) -> str:
        parts = [f"{self._failed} failed"] if self._failed else []
        parts += [f"{name} {value}" for name, value in self._counters.items()]
        parts += [f"{name} {_format_value(value)}" for name, value in self._status.items()]
        return ", ".join(parts)

    def _prefix(self) -> str:
        return f"{self.desc}: " if self.desc else ""

    def _progress_line(self, snap: ProgressSnapshot) -> str:
        if snap.total is not None:
            pct = 100.0 * snap.done / snap.total if snap.total else 100.0
            count = f"{snap.done}/{snap.total} {self.unit} ({pct:.1f}%)"
        else:
            count = f"{snap.done} {self.unit}"
        eta = snap.eta_s
        parts = [count, f"{snap.rate:.3g} {self.unit}/s", f"ETA {'?' if eta is None else format_duration(eta)}",
                 f"{snap.failed} failed"]
        parts += [f"{name} {value}" for name, value in snap.counters.items()]
        parts += [f"{name} {_format_value(value)}" for name, value in snap.status.items()]
        return self._prefix() + ", ".join(parts)

    def _summary_line(self, ok: bool) -> str:
        snap = self._snapshot()
        count = f"{snap.done}/{snap.total}" if snap.total is not None else str(snap.done)
        parts = [f"{'done' if ok else 'stopped at'} {count} {self.unit} in {format_duration(snap.elapsed_s)}",
                 f"{snap.rate:.3g} {self.unit}/s", f"{snap.failed} failed"]
        parts += [f"{name} {value}" for name, value in snap.counters.items()]
        parts += [f"{name} {_format_value(value)}" for name, value in snap.status.items()]
        return self._prefix() + ", ".join(parts)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file
        return False


def _caller_logger() -> logging.Logger:
    """The logger of the module that built the Progress (``logging.getLogger(__name__)`` there)."""
    frame = sys._getframe(2)
    return logging.getLogger(str(frame.f_globals.get("__name__", __name__)))
