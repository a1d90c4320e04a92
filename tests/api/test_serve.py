"""``imsearch serve``: its flags become the service settings; refusals happen before uvicorn starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.settings import Settings
from indexer.cli import build_parser, main
from indexer.commands.serve import _environment


def test_flags_become_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IMSEARCH_API_KEYS", "IMSEARCH_ALLOWED_ROOTS", "IMSEARCH_READ_ONLY", "IMSEARCH_DETECT"):
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args(
        ["serve", "--data-dir", str(tmp_path / "d"), "--db", "sqlite:///x.db", "--read-only", "--detect",
         "--allowed-root", str(tmp_path / "a"), "--allowed-root", str(tmp_path / "b"), "--device", "cpu"]
    )
    env = _environment(args)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.data_dir == tmp_path / "d" and settings.db == "sqlite:///x.db" and settings.device == "cpu"
    assert settings.read_only and settings.detect
    assert settings.allowed_roots == [tmp_path / "a", tmp_path / "b"]


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMSEARCH_API_KEYS", "first-key-1, second-key-2")
    monkeypatch.setenv("IMSEARCH_CORS_ORIGINS", '["http://a.example", "http://b.example"]')
    monkeypatch.setenv("IMSEARCH_MAX_K", "50")
    settings = Settings()
    assert settings.key_values() == [b"first-key-1", b"second-key-2"] and "first-key-1" not in repr(settings)
    assert settings.cors_origins == ["http://a.example", "http://b.example"] and settings.max_k == 50
    monkeypatch.setenv("IMSEARCH_API_KEYS", "short")
    with pytest.raises(ValueError, match="at least 8 characters"):
        Settings()
    monkeypatch.delenv("IMSEARCH_API_KEYS")
    monkeypatch.setenv("IMSEARCH_ALLOWED_ROOTS", "relative/folder")
    with pytest.raises(ValueError, match="absolute"):
        Settings()


def test_refusals(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["serve", "--workers", "2", "--data-dir", str(tmp_path)]) == 1
    assert "--read-only" in caplog.text
    assert main(["serve", "--port", "70000", "--data-dir", str(tmp_path)]) == 1
    assert "--port" in caplog.text


def test_thread_split_keeps_openmp_within_the_cpus() -> None:
    """The model's team plus an index job's workers never exceed the CPUs (libgomp would stop
    spinning and the model would run ~2x slower), and each keeps at least one thread."""
    from api.compute import thread_split

    assert thread_split(0, cpus=2) == (2, 1)  # this machine: searches keep both cores
    assert thread_split(0, cpus=16) == (9, 8)
    assert thread_split(3, cpus=4) == (2, 3)
    for cpus in range(1, 65):
        for setting in range(0, cpus + 1):
            model, job = thread_split(setting, cpus=cpus)
            assert model >= 1 and job >= 1
            assert model + (job - 1) <= cpus  # a one-thread team starts no worker


def test_model_runner_sets_its_own_thread_count() -> None:
    import torch

    from api.compute import ModelRunner

    runner = ModelRunner(threads=1)
    try:
        assert runner.run(torch.get_num_threads) == 1
    finally:
        runner.close()


def test_foreground_gate_pauses_background_work_while_searches_run() -> None:
    import threading
    import time

    from api.compute import ForegroundGate, ModelRunner

    gate = ForegroundGate(max_wait_s=30.0, min_run_s=0.25)
    gate.pause_point()  # nothing in flight: returns at once, no pause counted
    assert gate.pauses == 0

    release = threading.Event()
    runner = ModelRunner(threads=1, gate=gate)
    try:
        search = threading.Thread(target=runner.run, args=(release.wait,))
        search.start()
        while gate.in_flight == 0:
            time.sleep(0.001)
        resumed = threading.Event()
        job = threading.Thread(target=lambda: (gate.pause_point(), resumed.set()))
        job.start()
        assert not resumed.wait(0.3)  # the job waits while the search is in flight ...
        release.set()
        assert resumed.wait(10)  # ... and goes on as soon as it ends
        search.join()
        job.join()
        assert gate.in_flight == 0 and gate.pauses == 1 and gate.waited_s >= 0.3
    finally:
        release.set()
        runner.close()


def test_foreground_gate_lets_background_work_progress_under_constant_searches() -> None:
    import time

    from api.compute import ForegroundGate

    gate = ForegroundGate(max_wait_s=0.1, min_run_s=30.0)
    gate.enter()  # a search that never ends
    try:
        start = time.monotonic()
        gate.pause_point()
        assert time.monotonic() - start >= 0.1  # waited its maximum, then went on
        for _ in range(100):  # and now runs for min_run_s without pausing
            gate.pause_point()
        assert gate.pauses == 1
    finally:
        gate.leave()
    off = ForegroundGate(max_wait_s=0.0)
    off.enter()
    off.pause_point()  # pausing turned off
    assert off.pauses == 0
