"""Progress: log lines on a fake clock, the bar on a terminal, and `imsearch index` logging to a file."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from retrieval.progress import ENV_INTERVAL, Progress, default_interval, format_duration
from tests import imagefactory as f

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"(\d+)/(\d+) images \([\d.]+%\), ([\d.]+) images/s, ETA (\S+), (\d+) failed")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class Terminal(io.StringIO):
    """A text stream that says it is a terminal (what a TTY stderr looks like to Progress)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture()
def log() -> tuple[logging.Logger, Lines]:
    logger = logging.getLogger(f"test.progress.{os.getpid()}.{id(object())}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = Lines()
    logger.addHandler(handler)
    return logger, handler


def test_log_lines_every_interval_with_rate_eta_failures_and_counters(log: tuple[logging.Logger, Lines]) -> None:
    logger, out = log
    clock = FakeClock()
    with Progress(100, desc="index", unit="images", logger=logger, interval_s=10, clock=clock,
                  stream=io.StringIO()) as p:
        assert p.mode == "log"  # a StringIO is not a terminal
        for _ in range(4):  # 4 updates within the first 10 s: no line yet
            clock.advance(2.0)
            p.update(5, failed=1, duplicates=2)
        assert out.lines == []
        clock.advance(2.0)
        p.update(5)  # t = 10 s, 25 done
        assert out.lines == ["index: 25/100 images (25.0%), 2.5 images/s, ETA 30s, 4 failed, duplicates 8"]
        clock.advance(9.0)
        p.update(5)  # t = 19 s: under 10 s since the last line
        assert len(out.lines) == 1
        clock.advance(1.0)
        p.update(15)  # t = 20 s, 45 done
        assert out.lines[-1] == "index: 45/100 images (45.0%), 2.25 images/s, ETA 24s, 4 failed, duplicates 8"
        clock.advance(100.0)
        p.update(55)
    assert len(out.lines) == 4
    assert out.lines[2] == "index: 100/100 images (100.0%), 0.833 images/s, ETA 0s, 4 failed, duplicates 8"
    assert out.lines[3] == "index: done 100/100 images in 2m00s, 0.833 images/s, 4 failed, duplicates 8"


def test_unknown_total_status_values_and_a_failed_job(log: tuple[logging.Logger, Lines]) -> None:
    logger, out = log
    clock = FakeClock()
    with pytest.raises(RuntimeError), Progress(desc="epoch 1", unit="images", logger=logger, interval_s=5,
                                               clock=clock, mode="log") as p:
        clock.advance(5.0)
        p.update(10)
        assert out.lines[-1] == "epoch 1: 10 images, 2 images/s, ETA ?, 0 failed"
        p.set_status(loss=0.123456)
        clock.advance(5.0)
        p.set_total(40)  # a line with the new total
        assert out.lines[-1] == "epoch 1: 10/40 images (25.0%), 1 images/s, ETA 30s, 0 failed, loss 0.1235"
        raise RuntimeError("boom")
    assert out.lines[-1] == "epoch 1: stopped at 10/40 images in 10s, 1 images/s, 0 failed, loss 0.1235"
    snap = p.snapshot()
    assert (snap.done, snap.total, snap.failed, snap.status) == (10, 40, 0, {"loss": 0.123456})


def test_no_rate_before_any_time_and_off_mode_is_silent(log: tuple[logging.Logger, Lines]) -> None:
    logger, out = log
    clock = FakeClock()
    p = Progress(10, desc="x", unit="images", logger=logger, interval_s=0, clock=clock, mode="log")
    p.update(0)
    assert out.lines == ["x: 0/10 images (0.0%), 0 images/s, ETA ?, 0 failed"]
    p.close()
    p.close()  # idempotent
    assert len(out.lines) == 2
    quiet = Progress(10, logger=logger, interval_s=0, clock=clock, mode="off")
    quiet.update(10)
    quiet.close()
    assert len(out.lines) == 2 and quiet.done == 10


def test_updates_from_many_threads_are_all_counted(log: tuple[logging.Logger, Lines]) -> None:
    logger, _ = log
    p = Progress(8000, logger=logger, interval_s=0.0, mode="log")

    def work() -> None:
        for _ in range(1000):
            p.update(1, failed=1, skipped=2)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p.close()
    snap = p.snapshot()
    assert (snap.done, snap.failed, snap.counters) == (8000, 8000, {"skipped": 16000})


def test_a_terminal_gets_a_bar_and_no_periodic_lines(log: tuple[logging.Logger, Lines]) -> None:
    logger, out = log
    clock = FakeClock()
    term = Terminal()
    with Progress(4, desc="train", unit="images", logger=logger, interval_s=0, clock=clock, stream=term) as p:
        assert p.mode == "bar"
        clock.advance(1.0)
        p.update(2, failed=1)
        p.set_status(loss=0.5)
    assert "train" in term.getvalue() and "2/4" in term.getvalue() and "loss 0.5" in term.getvalue()
    assert out.lines == ["train: done 2/4 images in 1s, 2 images/s, 1 failed, loss 0.5"]


def test_default_logger_is_the_callers_and_the_interval_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Progress(mode="off").logger.name == __name__
    monkeypatch.setenv(ENV_INTERVAL, "0.5")
    assert default_interval() == 0.5 and Progress(mode="off").interval_s == 0.5
    monkeypatch.setenv(ENV_INTERVAL, "soon")
    with pytest.raises(ValueError, match=ENV_INTERVAL):
        default_interval()
    monkeypatch.delenv(ENV_INTERVAL)
    assert default_interval() == 10.0
    with pytest.raises(ValueError, match="mode"):
        Progress(mode="loud")  # type: ignore[arg-type]


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 9.4, 75, 3725)] == ["0s", "9s", "1m15s", "1h02m05s"]
    assert format_duration(float("inf")) == "?"


def test_imsearch_index_logs_periodic_progress_to_a_file(tmp_path: Path) -> None:
    """`imsearch index` with stderr to a file (not a terminal) logs done/total, images/s and ETA lines.

    Small batches and commits: 20 photos then take several progress steps, whether the pipeline
    counts images when they are described or when their batch is committed."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, p in enumerate(f.real_photos(20, stride=211)):
        shutil.copy(p, photos / f"{i:02d}_{p.name}")
    err = tmp_path / "stderr.log"
    env = dict(os.environ, PYTHONPATH=str(REPO), **{ENV_INTERVAL: "0.5"})
    cmd = [sys.executable, "-m", "indexer", "index", str(photos), "--data-dir", str(tmp_path / "data"),
           "--batch-size", "2", "--workers", "1", "--commit-every", "4"]
    with err.open("w") as fh:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True, env=env, cwd=REPO, timeout=600,
                              check=False)
    text = err.read_text()
    assert proc.returncode == 0, text
    lines = [m for m in (LINE.search(line) for line in text.splitlines()) if m]
    assert len(lines) >= 2, f"expected periodic progress lines in stderr, got:\n{text}"
    done = [int(m.group(1)) for m in lines]
    assert done == sorted(done) and all(int(m.group(2)) == 20 for m in lines)
    assert any(0 < d < 20 for d in done), f"no line while the job was running:\n{text}"
    assert all(float(m.group(3)) > 0 for m in lines if int(m.group(1)) > 0)


def test_training_logs_loss_throughput_and_eta_and_never_a_nan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from retrieval.train.trainer import Trainer
    from tests.retrieval.test_train import _photo_groups, _tiny

    monkeypatch.setenv(ENV_INTERVAL, "0")
    config = _tiny(tmp_path / "run", None, epochs=1, progress=True, pool_size=70, queries_per_epoch=9)
    with caplog.at_level(logging.INFO, logger="retrieval.train"):
        Trainer(config, _photo_groups(8, 10)).fit()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("retrieval.train")]
    assert not [line for line in lines if "nan" in line.lower()], lines
    epoch = [line for line in lines if line.startswith("epoch 1/1: ") and " images/s" in line]
    assert epoch and all("ETA" in line for line in epoch if "done" not in line), lines
    assert all("loss " in line and "step " in line for line in epoch), epoch  # a loss only once a batch ran
    assert any(line.startswith("epoch 1/1: done 36/36 images") for line in epoch), epoch  # 9 tuples x 4 images
    assert any(line.startswith("describing the mining pool: ") for line in lines), lines  # 70 images >= 64
    assert any(line.startswith("epoch 0/1: no training yet") for line in lines), lines


def test_eval_describes_with_progress_lines_and_names_a_broken_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from retrieval.errors import EvaluationError
    from retrieval.evaluate import describe_all
    from retrieval.models.descriptor import DescriptorModel
    from retrieval.models.extract import Extractor

    monkeypatch.setenv(ENV_INTERVAL, "0")
    extractor = Extractor(DescriptorModel.create("efficientnet_lite0", max_side=64, scales=(1.0,)), batch_size=4,
                          workers=1)
    photos = f.real_photos(10, stride=301)
    with caplog.at_level(logging.INFO, logger="retrieval.evaluate"):
        vectors = describe_all(extractor, photos, desc="eval: describing")
    np.testing.assert_allclose(vectors, extractor.extract(photos), atol=1e-6)  # in input order
    lines = [m for m in (LINE.search(r.getMessage()) for r in caplog.records if r.name == "retrieval.evaluate") if m]
    assert [int(m.group(1)) for m in lines] == list(range(1, 11)) and all(m.group(2) == "10" for m in lines)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(EvaluationError, match=r"broken\.jpg"):
        describe_all(extractor, [*photos[:2], broken])
