"""Options and the summary of an ingestion run (the local pipeline and the Ray runner alike)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class IndexOptions:
    """How a run walks, skips, commits and reports (the describing itself: IngestSettings)."""

    prune: bool = False
    retry_failed: bool = False
    include_hidden: bool = False
    commit_every: int = 64
    save_every_s: float = 30.0
    progress: bool = True  # a bar on a terminal (log lines elsewhere); False: log lines only
    progress_interval_s: float | None = None  # None: the Progress default (env IMSEARCH_PROGRESS_INTERVAL_S)
    report_dir: Path | None = None


@dataclass
class IndexSummary:
    found: int = 0
    indexed: int = 0
    unchanged: int = 0
    duplicates: int = 0
    failed: int = 0
    failed_before: int = 0
    pruned: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)  # the first 1000; all are in the report
    report: Path | None = None

    @property
    def images_per_s(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    @property
    def handled(self) -> int:
        """Files dealt with so far, whichever way."""
        return self.indexed + self.unchanged + self.duplicates + self.failed + self.failed_before

    def counts(self) -> dict[str, int]:
        """Job counters: done + skipped + failed == total once finished."""
        done = self.indexed
        skipped = self.unchanged + self.duplicates + self.failed_before
        return {"total": max(self.found, done + skipped + self.failed), "done": done, "skipped": skipped,
                "failed": self.failed}

    def lines(self) -> list[str]:
        out = [
            f"found {self.found} image files in {self.seconds:.1f} s: indexed {self.indexed} "
            f"({self.images_per_s:.1f} images/s), unchanged {self.unchanged}, duplicates {self.duplicates}, "
            f"failed {self.failed}"
            + (f" (+{self.failed_before} failed before, skipped)" if self.failed_before else ""),
        ]
        if self.pruned:
            out.append(f"pruned {self.pruned} deleted files from the index")
        if self.stage_s:
            out.append("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.stage_s.items()))
        for path, reason in self.failures[:20]:
            out.append(f"  failed: {path}: {reason}")
        if self.failed > 20:
            out.append(f"  ... and {self.failed - 20} more")
        if self.report:
            out.append(f"failure report: {self.report}")
        if self.interrupted:
            out.append("interrupted: run the same command again to continue")
        return out
