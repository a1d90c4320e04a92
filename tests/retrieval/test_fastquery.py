"""The torch-free query path: numpy head vs torch head, export vs torch Extractor, quick search vs SearchEngine."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from retrieval import search as engine_module
from retrieval.collection import Collection, IndexedImage
from retrieval.filters import SearchFilter
from retrieval.models import pooling
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import Extractor, input_size
from retrieval.models.whitening import WhiteningParams, learn_pca_whitening
from retrieval.quick import QuickUnavailableError
from retrieval.quick import head as qhead
from retrieval.quick import search as qsearch
from retrieval.quick.catalog import SqliteCatalog, head_revision
from retrieval.quick.export import export_quick_model, quick_model_ready
from retrieval.quick.model import QuickModel, artifact_paths, failure_path, head_from_settings, read_header
from retrieval.quick.model import input_size as quick_input_size
from retrieval.search import Query, SearchEngine
from retrieval.store import catalog
from retrieval.store.catalog import LabelStat
from retrieval.store.db import head_revision as alembic_head
from tests import imagefactory as f

REPO = Path(__file__).resolve().parents[2]
CHANNELS = 48


# ---------------------------------------------------------------------------- the numpy head


def reference_head(fmap: np.ndarray, pool: str, white: torch.nn.Linear | None, p: float = 3.0) -> np.ndarray:
    """The torch head of DescriptorModel, step by step in float64 (the slow, obvious reference)."""
    with torch.no_grad():
        return _reference_head(fmap, pool, white, p)


def _reference_head(fmap: np.ndarray, pool: str, white: torch.nn.Linear | None, p: float) -> np.ndarray:
    x = torch.from_numpy(fmap).double()[None]
    w = None if white is None else copy.deepcopy(white).double()
    if pool == "rmac":
        regions = pooling.rmac_regions(x.shape[-2], x.shape[-1], 3, 0.4)
        vecs = torch.stack([x[0, :, y0 : y0 + h, x0 : x0 + ww].amax(dim=(-2, -1)) for y0, x0, h, ww in regions])
        vecs = pooling.l2n(vecs, dim=-1)
        if w is not None:
            vecs = pooling.l2n(w(vecs), dim=-1)
        return pooling.l2n(vecs.sum(0)).numpy()
    funcs = {"mac": pooling.mac, "spoc": pooling.spoc, "gem": lambda t: pooling.gem(t, p)}
    vec = pooling.l2n(funcs[pool](x))[0]
    if w is not None:
        vec = pooling.l2n(w(vec))
    return vec.numpy()


def random_whitening(seed: int) -> torch.nn.Linear:
    rng = np.random.default_rng(seed)
    params = learn_pca_whitening(np.abs(rng.normal(size=(200, CHANNELS))), dim=CHANNELS // 2)
    from retrieval.models.whitening import Whitening

    return Whitening.from_params(params)


SHAPES = [(1, 1), (3, 7), (7, 3), (5, 5), (12, 16), (16, 9), (2, 30)]


@pytest.mark.parametrize("pool", ["rmac", "gem", "mac", "spoc"])
@pytest.mark.parametrize("whitened", [False, True], ids=["plain", "whitened"])
def test_numpy_head_matches_the_torch_head_in_float64(pool: str, whitened: bool) -> None:
    rng = np.random.default_rng(1)
    white = random_whitening(2) if whitened else None
    head = qhead.NumpyHead(
        pooling=pool, gem_p=2.7,
        whiten_weight=None if white is None else white.weight.detach().double().numpy(),
        whiten_bias=None if white is None else white.bias.detach().double().numpy(),
    )
    for h, w in SHAPES:
        fmap = np.maximum(rng.normal(size=(CHANNELS, h, w)), 0).astype(np.float32)
        fmap[:, 0, 0] += 3.0  # a strong activation: MAC and R-MAC regions must see it
        want = reference_head(fmap.astype(np.float64), pool, white, p=2.7)
        got = head(fmap)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        assert abs(np.linalg.norm(got) - 1.0) < 1e-5


@pytest.mark.parametrize("pool", ["rmac", "gem"])
def test_numpy_head_matches_descriptor_model_head(pool: str) -> None:
    """The real DescriptorModel.head (float32) on the same maps, whitening included, multi-scale summed."""
    model = DescriptorModel.create("efficientnet_lite0", weights="random", pooling=pool, max_side=64, scales=(1.0,))
    rng = np.random.default_rng(5)
    data = np.abs(rng.normal(size=(300, model.meta.channels)))
    model.set_whitening(learn_pca_whitening(data, dim=64))
    assert model.whiten is not None
    head = qhead.NumpyHead(
        pooling=pool, gem_p=model.gem_p or 3.0, whiten_weight=model.whiten.weight.detach().double().numpy(),
        whiten_bias=model.whiten.bias.detach().double().numpy(),
    )
    maps = [np.maximum(rng.normal(size=(model.meta.channels, h, w)), 0).astype(np.float32) for h, w in SHAPES[2:]]
    with torch.no_grad():
        per_scale = [model.head(torch.from_numpy(m)[None])[0] for m in maps]
        want = pooling.l2n(torch.stack(per_scale).sum(0)).numpy()
    np.testing.assert_allclose(head.multi_scale(maps), want, atol=1e-5, rtol=0)


SUPERGLOBAL_HEADS = [
    ("gem", {"p": 4.6}, "sum"),  # GeM+
    ("rgem", {}, "sum"),  # regional GeM, default window and exponents
    ("rgem", {"p": 4.6, "pr": 2.0, "size": 3}, "sum"),
    ("gem", {"relu_eps": 0.3}, "sum"),  # ReLU+ (a floor the random maps cross)
    ("rmac", {"relu_eps": 0.3}, "max"),  # ReLU+ and Scale-GeM on R-MAC
    ("gem", {}, "gem"),  # Scale-GeM power mean
    ("rgem", {"p": 4.6, "relu_eps": 0.05}, "max"),  # all of them
]


@pytest.mark.parametrize(("pool", "params", "agg"), SUPERGLOBAL_HEADS)
@pytest.mark.parametrize("whitened", [False, True], ids=["plain", "whitened"])
def test_numpy_head_matches_the_torch_head_with_superglobal_options(
    pool: str, params: dict[str, float], agg: str, whitened: bool
) -> None:
    """Every SuperGlobal option: the numpy head made from the model's head settings (as an export
    writes them) against DescriptorModel.scale_descriptor / describe_maps in float64."""
    model = DescriptorModel.create("efficientnet_lite0", weights="random", pooling=pool, pooling_params=params,
                                   max_side=64, scales=(1.0, 0.7, 0.5), scale_agg=agg)
    rng = np.random.default_rng(7)
    if whitened:  # a random projection: the head's arithmetic is the point, not a learned whitening
        c = model.meta.channels
        model.set_whitening(WhiteningParams(mean=np.abs(rng.normal(size=c)) * 0.1,
                                            weight=rng.normal(size=(64, c)) / np.sqrt(c),
                                            eigenvalues=np.ones(64), power=0.5, n_samples=300))
    settings = json.loads(json.dumps(model.head_settings()))  # through JSON, as in the header
    white = model.whiten
    head = head_from_settings(
        settings,
        whiten_weight=None if white is None else white.weight.detach().double().numpy(),
        whiten_bias=None if white is None else white.bias.detach().double().numpy(),
    )
    ref = copy.deepcopy(model).double()
    shapes = [(1, 1), (3, 7), (7, 3), (12, 16), (2, 30)]
    maps = [np.maximum(rng.normal(size=(model.meta.channels, h, w)), 0).astype(np.float32) for h, w in shapes]
    with torch.no_grad():
        for fmap in maps:
            want = ref.scale_descriptor(torch.from_numpy(fmap).double()[None])[0].numpy()
            np.testing.assert_allclose(head(fmap), want, atol=1e-5, rtol=0)
        for triple in (maps[:3], maps[2:]):
            want = ref.describe_maps([torch.from_numpy(m).double()[None] for m in triple])[0].numpy()
            np.testing.assert_allclose(head.multi_scale(triple), want, atol=1e-5, rtol=0)


def test_rmac_grid_and_input_size_are_the_torch_sides() -> None:
    for h in range(1, 40):
        for w in range(1, 40, 3):
            for levels, overlap in ((3, 0.4), (2, 0.5)):
                assert qhead.rmac_regions(h, w, levels, overlap) == pooling.rmac_regions(h, w, levels, overlap)
    for width, height in [(640, 480), (480, 640), (300, 300), (1, 999), (4000, 30), (333, 517)]:
        for scale in (1.0, 0.7071067811865475, 0.5):
            for max_side, stride in ((512, 32), (1024, 32), (224, 16)):
                assert quick_input_size(width, height, max_side, scale, stride) == input_size(
                    width, height, max_side, scale, stride
                )


def test_unknown_pooling_is_refused() -> None:
    with pytest.raises(QuickUnavailableError, match="pooling"):
        qhead.NumpyHead(pooling="netvlad")


def test_quick_types_mirror_the_engine_types() -> None:
    def names(cls: type) -> list[str]:
        return [fld.name for fld in dataclasses.fields(cls)]

    assert names(qsearch.QuickHit) == names(engine_module.Hit)
    assert names(qsearch.QuickLabel) == names(engine_module.LabelInfo)
    assert names(qsearch.QuickResult) == names(engine_module.SearchResult)
    assert qsearch.MAX_K == engine_module.MAX_K
    assert head_revision() == alembic_head()


# ---------------------------------------------------------------------------- export and descriptors


@dataclasses.dataclass
class Env:
    root: Path
    model: DescriptorModel
    photos: list[Path]


def build(root: Path, model: DescriptorModel, photos: list[Path], *, shards: int | None = None) -> None:
    """A collection described by the torch Extractor (the reference), written through Collection;
    every third photo is labelled "dog", the others "cat"."""
    ex = Extractor(model, batch_size=4, workers=1)
    items = []
    order = {str(p): i for i, p in enumerate(photos)}
    for res in ex.iter_extract_paths(photos):
        assert res.ok and res.info is not None and res.descriptor is not None
        path = Path(str(res.key))
        data = path.read_bytes()
        items.append(IndexedImage(
            sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), width=res.info.width,
            height=res.info.height, format=res.info.format, descriptor=res.descriptor, path=str(path),
            mtime_ns=path.stat().st_mtime_ns,
            labels={"detector": [LabelStat("dog" if order[str(path)] % 3 == 0 else "cat", 0.9, 0.3, 1)]},
        ))
    with Collection.open(root, model=model, shards=shards) as col:
        col.write(items)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    model = DescriptorModel.create("efficientnet_lite0", max_side=192, scales=(1.0, 0.7071))
    photos = f.real_photos(30, stride=131)
    root = tmp_path_factory.mktemp("quick") / "data"
    build(root, model, photos)
    export_quick_model(root, model)
    yield Env(root, model, photos)


def test_export_writes_both_files_checked_against_torch(env: Env) -> None:
    onnx_path, head_path = artifact_paths(env.root, env.model.fingerprint)
    assert onnx_path.is_file() and head_path.is_file() and quick_model_ready(env.root, env.model.fingerprint)
    assert onnx_path.parent == env.root / "models" and (env.root / "models" / f"{onnx_path.stem}.pt").is_file()
    meta, _ = read_header(head_path)
    assert meta.fingerprint == env.model.fingerprint and meta.export_cosine >= 0.9999
    assert meta.model == env.model.meta.to_dict()
    mtime = head_path.stat().st_mtime_ns
    export_quick_model(env.root, env.model)  # already there: nothing rewritten
    assert head_path.stat().st_mtime_ns == mtime


def test_quick_descriptor_matches_the_torch_extractor(env: Env) -> None:
    quick = QuickModel(*artifact_paths(env.root, env.model.fingerprint))
    ref = Extractor(env.model, batch_size=4, workers=1).extract(env.photos[:8])  # default precision
    ours = np.stack([quick.describe(p) for p in env.photos[:8]])
    cos = np.sum(ref * ours, axis=1)
    assert cos.min() >= 0.999, cos
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    from_bytes = quick.describe(env.photos[0].read_bytes())
    np.testing.assert_array_equal(from_bytes, ours[0])


def test_a_whitened_gem_model_exports_and_matches(tmp_path: Path) -> None:
    model = DescriptorModel.create("efficientnet_lite0", pooling="gem", max_side=160, scales=(1.0, 0.5))
    photos = f.real_photos(24, stride=173)
    model.set_whitening(Extractor(model, workers=1).learn_whitening(photos[:20], dim=128))
    export_quick_model(tmp_path, model)
    quick = QuickModel(*artifact_paths(tmp_path, model.fingerprint))
    # float32 on both sides: bf16 alone moves a 128-d whitened descriptor by up to ~3e-3 on CPUs with native bf16
    ref = Extractor(model, batch_size=4, workers=1, precision="fp32").extract(photos[20:])
    ours = np.stack([quick.describe(p) for p in photos[20:]])
    assert ours.shape == (4, 128) and np.sum(ref * ours, axis=1).min() >= 0.9999


def test_a_superglobal_model_exports_and_matches(tmp_path: Path) -> None:
    """Regional GeM with GeM+'s exponent and ReLU+, two scales summed: exported (header version 2) and
    the onnxruntime + numpy descriptors match the torch extractor's."""
    model = DescriptorModel.create("efficientnet_lite0", pooling="rgem", pooling_params={"p": 4.6, "relu_eps": 0.014},
                                   max_side=160, scales=(1.0, 0.5))
    photos = f.real_photos(4, stride=211)
    export_quick_model(tmp_path, model)
    onnx_path, head_path = artifact_paths(tmp_path, model.fingerprint)
    meta, head = read_header(head_path)
    assert meta.model == model.meta.to_dict() and meta.export_cosine >= 0.9999
    assert (head.pooling, head.gem_p, head.relu_eps, head.rgem_size) == ("rgem", pytest.approx(4.6), 0.014, 5)
    quick = QuickModel(onnx_path, head_path)
    ref = Extractor(model, batch_size=4, workers=1).extract(photos)
    ours = np.stack([quick.describe(p) for p in photos])
    assert np.sum(ref * ours, axis=1).min() >= 0.999


def test_a_scale_gem_model_is_refused_by_export_and_recorded(tmp_path: Path) -> None:
    model = DescriptorModel.create("efficientnet_lite0", weights="random", max_side=64, scales=(1.0, 0.5),
                                   scale_agg="max")
    with pytest.raises(QuickUnavailableError, match="combines its scales by 'max'"):
        export_quick_model(tmp_path, model)
    assert "'max'" in failure_path(tmp_path, model.fingerprint).read_text()
    assert not artifact_paths(tmp_path, model.fingerprint)[0].exists()


def test_a_version_1_head_file_is_still_read(env: Env, tmp_path: Path) -> None:
    """A head file written before the resolved head settings (version 1) gives the same numpy head."""
    _, head_path = artifact_paths(env.root, env.model.fingerprint)
    with np.load(head_path) as npz:
        header = json.loads(bytes(npz["header"]).decode("utf-8"))
    assert header["version"] == 2 and header["head"] == env.model.head_settings()
    old = {k: v for k, v in header.items() if k != "head"} | {"version": 1}
    old_path = tmp_path / head_path.name
    np.savez(old_path, header=np.frombuffer(json.dumps(old).encode("utf-8"), dtype=np.uint8))
    assert read_header(old_path)[1] == read_header(head_path)[1]
    old["version"] = 3
    np.savez(old_path, header=np.frombuffer(json.dumps(old).encode("utf-8"), dtype=np.uint8))
    with pytest.raises(QuickUnavailableError, match="version 3, this imsearch reads 1, 2"):
        read_header(old_path)


def test_a_corrupt_or_foreign_export_is_not_used(env: Env, tmp_path: Path) -> None:
    onnx_path, head_path = artifact_paths(env.root, env.model.fingerprint)
    copy_onnx, copy_head = tmp_path / onnx_path.name, tmp_path / head_path.name
    copy_head.write_bytes(head_path.read_bytes())
    copy_onnx.write_bytes(onnx_path.read_bytes()[:-10])
    with pytest.raises(QuickUnavailableError, match="size"):
        QuickModel(copy_onnx, copy_head)
    with pytest.raises(QuickUnavailableError, match="no exported model"):
        QuickModel(tmp_path / "none.onnx", tmp_path / "none.head.npz")
    copy_head.write_bytes(b"garbage")
    with pytest.raises(QuickUnavailableError, match="unreadable"):
        read_header(copy_head)


# ---------------------------------------------------------------------------- quick search vs the engine


#: the engines here run their queries in float32 like the quick path (torch bf16 queries differ from
#: onnxruntime float32 ones by up to ~4e-3 on CPUs with native bf16, enough to swap near-ties)
SCORE_TOL = 2e-3


def same(a: Sequence[Any], b: Sequence[Any]) -> None:
    assert [h.image_id for h in a] == [h.image_id for h in b]
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=SCORE_TOL)
    for x, y in zip(a, b, strict=True):
        assert (x.path, x.width, x.height) == (y.path, y.width, y.height)


def test_quick_search_gives_the_engines_results(env: Env) -> None:
    engine = SearchEngine.open(env.root, precision="fp32")
    try:
        with qsearch.QuickSearch.open(env.root) as quick:
            for photo in env.photos[:4]:
                want = engine.search(Query(image=photo), k=8)
                got = quick.search(photo, k=8)
                same(got.hits, want.hits)
                assert got.hits[0].path == str(photo) and got.next_offset == want.next_offset == 8
            image_id = want.hits[2].image_id
            for kw in ({"k": 5}, {"k": 5, "offset": 5}, {"k": 4, "offset": 26}, {"k": 3, "threshold": 0.5}):
                by_id = engine.search(Query(image_id=image_id), exclude_query=True, **kw)
                quick_by_id = quick.search(image_id, exclude_query=True, **kw)
                assert [(h.image_id, h.score) for h in quick_by_id.hits] == [(h.image_id, h.score)
                                                                             for h in by_id.hits]
                assert (quick_by_id.offset, quick_by_id.next_offset) == (by_id.offset, by_id.next_offset)
            with pytest.raises(Exception, match="no indexed image"):
                quick.search(12345)
    finally:
        engine.close()


@pytest.mark.parametrize(
    "flt",
    [
        SearchFilter(labels_any=("dog",)),
        SearchFilter(labels_none=("dog",)),
        SearchFilter(path_prefix=str(f.CALTECH / "a")),  # the classes starting with "a"
    ],
    ids=["dogs", "no-dogs", "prefix"],
)
def test_quick_search_applies_filters_like_the_engine(env: Env, flt: SearchFilter) -> None:
    engine = SearchEngine.open(env.root, precision="fp32")
    try:
        with qsearch.QuickSearch.open(env.root) as quick:
            for offset in (0, 4):
                want = engine.search(Query(image=env.photos[1]), k=4, offset=offset, flt=flt)
                got = quick.search(env.photos[1], k=4, offset=offset, flt=flt)
                same(got.hits, want.hits)
                assert got.next_offset == want.next_offset
            allowed = engine.collection.read(catalog.resolve_filter, space="image", flt=flt)
            assert 0 < len(allowed) < len(env.photos)
            assert {h.image_id for h in quick.search(env.photos[1], k=30, flt=flt).hits} == set(allowed.tolist())
    finally:
        engine.close()


def test_catalog_reader_answers_like_the_repository(env: Env) -> None:
    with Collection.open(env.root, writable=False) as col:
        ids = [int(i) for i in col.index_ids("image")[:6]] + [999]
        reader = SqliteCatalog(env.root / "catalog.db")
        try:
            images = col.read(catalog.get_images, image_ids=ids)
            rows = reader.images(ids)
            assert [None if r is None else (r.id, r.path, r.stored_path, r.width, r.height) for r in rows] == [
                None if r is None else (r.id, r.path, r.stored_path, r.width, r.height) for r in images
            ]
            labels = col.read(catalog.get_labels, image_ids=ids)
            assert {i: [(x.label, x.source, x.max_score, x.area_fraction) for x in v] for i, v in labels.items()} == {
                i: [(x.label, x.source, x.max_score, x.area_fraction) for x in v]
                for i, v in reader.labels(ids).items()
            }
            active = col.read(catalog.get_active_model)
            got = reader.active_model()
            assert active is not None and got is not None
            assert (got.id, got.fingerprint, got.meta) == (active.id, active.fingerprint, active.meta)
            assert reader.vector_count("image") == len(col.read(catalog.vector_ids, space="image"))
            vec = reader.vector("image", ids[0])
            assert vec is not None
            np.testing.assert_array_equal(vec, col.read(catalog.get_vectors, space="image", ids=[ids[0]])[0])
            assert reader.vector("image", 999) is None
        finally:
            reader.close()


def test_a_stale_index_or_a_server_catalog_falls_back(env: Env, tmp_path: Path) -> None:
    extra = f.real_photos(2, stride=1)[1]  # not one of the collection's photos (stride 131)
    data = extra.read_bytes()
    vec = np.zeros(env.model.meta.dim, dtype=np.float32)
    vec[0] = 1.0
    writer = Collection.open(env.root, model=env.model)
    try:  # committed to the catalog, not saved to the index files yet: the files are stale
        writer.write([IndexedImage(hashlib.sha256(data).hexdigest(), len(data), 10, 10, "JPEG", vec, path=str(extra))])
        with pytest.raises(QuickUnavailableError, match="stale"):
            qsearch.QuickSearch.open(env.root)
    finally:
        writer.remove_files([str(extra)])
        writer.close()
    with qsearch.QuickSearch.open(env.root) as quick:  # saved again: served
        assert quick.search(env.photos[0], k=1).hits[0].path == str(env.photos[0])
    with pytest.raises(QuickUnavailableError, match="SQLite"):
        qsearch.QuickSearch.open(env.root, db_url="postgresql://me@localhost/imsearch")
    with pytest.raises(QuickUnavailableError, match="no SQLite catalog"):
        qsearch.QuickSearch.open(tmp_path)


def test_a_fast_search_imports_no_torch(env: Env) -> None:
    """In a fresh interpreter: the search command's quick path, then neither torch nor SQLAlchemy is loaded."""
    code = (
        "import argparse, json, sys\n"
        "from indexer.commands import search\n"
        "p = argparse.ArgumentParser(); sub = p.add_subparsers()\n"
        "search.register(sub)\n"
        f"args = p.parse_args(['search', {str(env.photos[3])!r}, '-k', '3', '--data-dir', {str(env.root)!r}])\n"
        "assert search.run(args) == 0\n"
        "print(json.dumps([m for m in ('torch', 'sqlalchemy', 'alembic') if m in sys.modules]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == [], proc.stdout
    assert str(env.photos[3]) in proc.stdout and "3 results" in proc.stdout


def test_a_model_that_cannot_be_exported_is_recorded_and_not_retried(tmp_path: Path) -> None:
    model = DescriptorModel.create("efficientnet_lite0", weights="random", max_side=64, scales=(1.0,))
    model.meta = dataclasses.replace(model.meta, pooling="netvlad")  # a head numpy does not have
    model.invalidate_fingerprint()
    with pytest.raises(QuickUnavailableError, match="netvlad"):
        export_quick_model(tmp_path, model)
    marker = failure_path(tmp_path, model.fingerprint)
    assert "netvlad" in marker.read_text() and not artifact_paths(tmp_path, model.fingerprint)[0].exists()
    marker.write_text("recorded reason\n")
    with pytest.raises(QuickUnavailableError, match="recorded reason"):  # not tried again
        export_quick_model(tmp_path, model)


def test_a_recorded_failure_sends_searches_to_torch(env: Env) -> None:
    marker = failure_path(env.root, env.model.fingerprint)
    marker.write_text("the export did not match torch\n")
    try:
        with qsearch.QuickSearch.open(env.root) as quick:
            image_id = int(quick.index.ids()[0])
            assert quick.search(image_id, k=1).hits[0].image_id == image_id  # by id: no model needed
            with pytest.raises(QuickUnavailableError, match="did not match"):
                quick.search(env.photos[0], k=1)
    finally:
        marker.unlink()
    with qsearch.QuickSearch.open(env.root) as quick:
        assert quick.search(env.photos[0], k=1).hits[0].path == str(env.photos[0])


def test_a_sharded_collection_is_served_too(env: Env, tmp_path: Path) -> None:
    build(tmp_path, env.model, env.photos[:12], shards=3)
    export_quick_model(tmp_path, env.model)
    engine = SearchEngine.open(tmp_path, precision="fp32")
    try:
        assert engine.collection.index_info()["image"]["shards"] == 3
        with qsearch.QuickSearch.open(tmp_path) as quick:
            for offset in (0, 5):
                want = engine.search(Query(image=env.photos[2]), k=5, offset=offset)
                got = quick.search(env.photos[2], k=5, offset=offset)
                same(got.hits, want.hits)
                assert got.next_offset == want.next_offset
    finally:
        engine.close()
