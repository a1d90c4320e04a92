"""Peak resident memory of a process, measured so that it is the process's own.

``getrusage(...).ru_maxrss`` (and ``wait4``'s) is the wrong tool for a child of a benchmark: on
Linux the high-water mark survives ``exec``, so a child forked from a parent that holds 3 GB
reports at least 3 GB whatever it does itself. ``VmHWM`` in ``/proc/PID/status`` belongs to
the current address space and starts afresh at ``exec``.

:class:`TreeSampler` follows a process and its descendants (a server and the child process of
its index job): each one's peak (``VmHWM``, exact) and the peak of their sum (sampled: the
sum at one instant, so it can miss a spike shorter than the interval).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

MIB = 1 << 20


def vm_hwm_mib(pid: int | str = "self") -> float:
    """Peak resident size (``VmHWM``) of a live process, in MiB; 0.0 when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def run_with_peak(cmd: Sequence[str], *, cwd: Path | None = None, poll_s: float = 0.05) -> tuple[int, str, str, float]:
    """Run ``cmd``; (exit code, stdout, stderr, peak RSS MiB from ``VmHWM``, polled until it exits)."""
    with subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        peak = 0.0
        out_parts: list[str] = []
        err_parts: list[str] = []
        def drain(stream: IO[str] | None, parts: list[str]) -> None:
            if stream is not None:
                parts.append(stream.read())

        readers = [threading.Thread(target=drain, args=(proc.stdout, out_parts), daemon=True),
                   threading.Thread(target=drain, args=(proc.stderr, err_parts), daemon=True)]
        for r in readers:
            r.start()
        while proc.poll() is None:
            peak = max(peak, vm_hwm_mib(proc.pid))
            time.sleep(poll_s)
        for r in readers:
            r.join()
        return proc.returncode, "".join(out_parts), "".join(err_parts), peak


def status_bytes(pid: int | str, names: Sequence[str] = ("VmRSS", "RssAnon", "VmHWM")) -> dict[str, int]:
    """Fields of ``/proc/PID/status`` in bytes (those it has); empty when the process is gone."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in names:
                out[name] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return out


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (children first), from ``/proc/*/stat``."""
    parent_of: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent_of[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces
    found: list[int] = []
    frontier = [pid]
    while frontier:
        kids = [child for child, parent in parent_of.items() if parent in frontier]
        found.extend(kids)
        frontier = kids
    return found


def process_label(pid: int) -> str:
    """What a process is, in a few words (a Python multiprocessing child by its role)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if "spawn_main" in cmd:
        return "child process (multiprocessing)"
    if "resource_tracker" in cmd:
        return "multiprocessing resource tracker"
    return cmd[:60]


@dataclass
class Peak:
    """Peak resident bytes: all of it, and its anonymous part (the rest: libraries, mapped files)."""

    rss: int = 0
    anon: int = 0

    def update(self, rss: int, anon: int) -> None:
        self.rss = max(self.rss, rss)
        self.anon = max(self.anon, anon)

    def mib(self) -> str:
        return f"{self.rss / MIB:.0f} MiB (anonymous {self.anon / MIB:.0f})"


@dataclass
class PhasePeaks:
    name: str
    root: Peak
    total: int  # peak of the sum of the root and its descendants, bytes


@dataclass
class _Child:
    label: str
    peak: Peak = field(default_factory=Peak)
    hwm: int = 0


class TreeSampler(threading.Thread):
    """Peak resident memory of process ``pid`` and of its descendants, overall and per phase.

    ``root``: the process's sampled peak; ``root_hwm``: its exact one (``VmHWM``, as of the last
    sample); ``children``:
    each descendant seen (its label, sampled peak, last ``VmHWM``, i.e. its exact peak up to the
    last sample); ``total``: the peak of the sum at one sample."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval_s = interval_s
        self.root = Peak()
        self.root_hwm = 0
        self.total = 0
        self.children: dict[int, _Child] = {}
        self.phases: list[PhasePeaks] = []
        self._phase_root = Peak()
        self._phase_total = 0
        self._lock = threading.Lock()
        self.done = threading.Event()

    def sample(self) -> tuple[int, int]:
        """Sample now; the root's (rss, anonymous) bytes."""
        with self._lock:
            now = status_bytes(self.pid)
            rss, anon = now.get("VmRSS", 0), now.get("RssAnon", 0)
            self.root_hwm = max(self.root_hwm, now.get("VmHWM", 0))
            total = rss
            for child in descendants(self.pid):
                got = status_bytes(child)
                if not got:
                    continue
                entry = self.children.get(child)
                if entry is None:
                    entry = self.children[child] = _Child(process_label(child))
                entry.peak.update(got.get("VmRSS", 0), got.get("RssAnon", 0))
                entry.hwm = max(entry.hwm, got.get("VmHWM", 0))
                total += got.get("VmRSS", 0)
            for peak in (self.root, self._phase_root):
                peak.update(rss, anon)
            self.total = max(self.total, total)
            self._phase_total = max(self._phase_total, total)
            return rss, anon

    def run(self) -> None:
        while not self.done.wait(self.interval_s):
            self.sample()

    def mark(self, phase: str) -> None:
        """Close a phase: record its peaks."""
        self.sample()
        with self._lock:
            self.phases.append(PhasePeaks(phase, self._phase_root, self._phase_total))
            self._phase_root, self._phase_total = Peak(), 0
