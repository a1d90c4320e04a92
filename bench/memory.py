"""Peak resident memory of a process, measured so that it is the process's own.

``getrusage(...).ru_maxrss`` (and ``wait4``'s) is the wrong tool for a child of a benchmark: on
Linux the high-water mark survives ``exec``, so a child forked from a parent that holds 3 GB
reports at least 3 GB whatever it does itself. ``VmHWM`` in ``/proc/PID/status`` belongs to
the current address space and starts afresh at ``exec``.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO


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
