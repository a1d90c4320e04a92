"""`imsearch search` as a user runs it: the first search exports the model, later ones skip torch; paging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from retrieval.models.descriptor import DescriptorModel
from retrieval.quick.export import quick_model_ready
from tests import imagefactory as f
from tests.retrieval.test_fastquery import build

REPO = Path(__file__).resolve().parents[2]


def imsearch(*args: str, data: Path, env: dict[str, str] | None = None,
             python: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, *python, "-m", "indexer", *args, "--data-dir", str(data)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("IMSEARCH_")}
    full_env.update(PYTHONPATH=str(REPO), **(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=REPO, timeout=600, check=False)
    assert proc.returncode == 0, f"imsearch {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def hits(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return list(json.loads(proc.stdout)["hits"])


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DescriptorModel, list[Path]]:
    model = DescriptorModel.create("efficientnet_lite0", max_side=160, scales=(1.0, 0.7071))
    photos = f.real_photos(16, stride=241)
    root = tmp_path_factory.mktemp("search-cli") / "data"
    build(root, model, photos)
    return root, model, photos


def test_first_search_exports_then_searches_skip_torch_with_the_same_results(
    collection: tuple[Path, DescriptorModel, list[Path]],
) -> None:
    root, model, photos = collection
    query = str(photos[4])
    assert not quick_model_ready(root, model.fingerprint)
    first = imsearch("search", query, "-k", "5", "--json", data=root)
    assert "fast query path unavailable" in first.stderr and "exported the model for fast queries" in first.stderr
    assert quick_model_ready(root, model.fingerprint)
    fast = imsearch("-vv", "search", query, "-k", "5", "--json", data=root)
    assert "quick model" in fast.stderr and "unavailable" not in fast.stderr, fast.stderr
    forced = imsearch("-vv", "search", query, "-k", "5", "--json", data=root, env={"IMSEARCH_FAST_QUERY": "0"})
    assert "quick model" not in forced.stderr and "needs the torch path" in forced.stderr
    flag = imsearch("search", query, "-k", "5", "--json", "--no-fast-query", data=root)
    for other in (first, forced, flag):
        assert [h["image_id"] for h in hits(fast)] == [h["image_id"] for h in hits(other)]
        # torch bf16 vs onnxruntime float32 queries: up to ~4e-3 apart on CPUs with native bf16
        assert all(abs(a["score"] - b["score"]) < 6e-3 for a, b in zip(hits(fast), hits(other), strict=True))
    assert hits(fast)[0]["path"] == query and set(hits(fast)[0]) == set(hits(forced)[0])


@pytest.mark.parametrize("fast", ["1", "0"])
def test_offset_pages_through_one_ranking(collection: tuple[Path, DescriptorModel, list[Path]], fast: str) -> None:
    root, _, photos = collection
    env = {"IMSEARCH_FAST_QUERY": fast}
    big = json.loads(imsearch("search", str(photos[1]), "-k", "9", "--json", data=root, env=env).stdout)
    pages = [json.loads(imsearch("search", str(photos[1]), "-k", "3", "--offset", str(o), "--json", data=root,
                                 env=env).stdout) for o in (0, 3, 6)]
    assert [p["offset"] for p in pages] == [0, 3, 6] and [p["next_offset"] for p in pages] == [3, 6, 9]
    assert [h["image_id"] for p in pages for h in p["hits"]] == [h["image_id"] for h in big["hits"]]
    last = json.loads(imsearch("search", str(photos[1]), "-k", "5", "--offset", "14", "--json", data=root,
                               env=env).stdout)
    assert len(last["hits"]) == 2 and last["next_offset"] is None
    table = imsearch("search", str(photos[1]), "-k", "3", "--offset", "3", data=root, env=env).stdout
    assert "next page: --offset 6" in table and "\n   4  " in table  # ranks continue from the offset


def test_the_command_line_never_imports_torch_for_a_fast_search(
    collection: tuple[Path, DescriptorModel, list[Path]],
) -> None:
    """The whole `imsearch search` process (parser of every command included) loads no torch."""
    root, model, photos = collection
    if not quick_model_ready(root, model.fingerprint):
        imsearch("search", str(photos[0]), "-k", "1", data=root)  # the first search exports
    proc = imsearch("search", str(photos[2]), "-k", "3", data=root, python=("-X", "importtime"))
    assert "3 results" in proc.stdout
    heavy = sorted({line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                    if line.startswith("import time:")} & {"torch", "sqlalchemy", "alembic", "torchvision"})
    assert heavy == [], f"imported {heavy}; see which module pulls them in with: python -X importtime -m indexer search"


def test_label_filters_take_the_quick_path_with_the_same_results(
    collection: tuple[Path, DescriptorModel, list[Path]],
) -> None:
    root, model, photos = collection
    if not quick_model_ready(root, model.fingerprint):
        imsearch("search", str(photos[0]), "-k", "1", data=root)  # the first search exports
    args = ("search", str(photos[5]), "-k", "10", "--label", "dog", "--json")
    fast = imsearch("-vv", *args, data=root)
    forced = imsearch(*args, data=root, env={"IMSEARCH_FAST_QUERY": "0"})
    assert "quick model" in fast.stderr and "torch path" not in fast.stderr, fast.stderr
    assert [h["image_id"] for h in hits(fast)] == [h["image_id"] for h in hits(forced)]
    assert 0 < len(hits(fast)) < len(photos) and all(
        {lab["label"] for lab in h["labels"]} == {"dog"} for h in hits(fast)
    )
