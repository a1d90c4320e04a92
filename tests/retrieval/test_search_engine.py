"""The search engine on real photos: by image, by id, by box, objects, re-ranking, duplicates, labels."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.collection import Collection
from retrieval.errors import ImageDecodeError, ImsearchError, NotFoundError
from retrieval.filters import SearchFilter
from retrieval.ingest import IndexOptions, IngestSettings, LocalIngest
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import Extractor
from retrieval.rerank import RerankOptions
from retrieval.search import Query, SearchEngine
from retrieval.vision import create_detector
from tests import imagefactory as f

MODELS = Path(__file__).resolve().parents[3] / "shared" / "models"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for i, p in enumerate(f.real_photos(24, stride=167)):
        shutil.copy(p, root / f"{i:02d}_{p.parent.name}_{p.name}")
    original = sorted(root.iterdir())[0]
    shutil.copy(original, root / "zz_exact_copy.jpg")
    Image.open(original).save(root / "zz_recompressed.jpg", quality=70)
    return root


@pytest.fixture(scope="module")
def engine(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SearchEngine]:
    model = DescriptorModel.create("efficientnet_lite0", max_side=224, scales=(1.0, 0.7071))
    col = Collection.open(tmp_path_factory.mktemp("data"), model=model)
    ex = Extractor(model, batch_size=8)
    det = create_detector("yolox_nano", model_dir=MODELS)
    settings = IngestSettings(batch_size=8, region_min_score=0.3)
    ingest = LocalIngest.over(col, settings, detector=det, options=IndexOptions(progress=False))
    summary = ingest.run([photos])
    assert summary.failed == 0 and summary.indexed + summary.duplicates + summary.unchanged == 26
    eng = SearchEngine(col, ex)
    yield eng
    eng.close()


def test_the_photo_itself_comes_first(engine: SearchEngine, photos: Path) -> None:
    query = sorted(photos.iterdir())[5]
    res = engine.search(Query(image=query), k=5)
    assert len(res.hits) == 5
    assert res.hits[0].path == str(query) and res.hits[0].score > 0.999
    assert all(a.score >= b.score for a, b in zip(res.hits, res.hits[1:], strict=False))
    from_bytes = engine.search(Query(image=query.read_bytes()), k=5)
    assert [h.image_id for h in from_bytes.hits] == [h.image_id for h in res.hits]


def test_by_id_and_exclusion(engine: SearchEngine, photos: Path) -> None:
    first = engine.search(Query(image=sorted(photos.iterdir())[3]), k=3).hits[0]
    by_id = engine.search(Query(image_id=first.image_id), k=3)
    assert by_id.hits[0].image_id == first.image_id
    excluded = engine.search(Query(image_id=first.image_id), k=3, exclude_query=True)
    assert first.image_id not in [h.image_id for h in excluded.hits] and len(excluded.hits) == 3
    with pytest.raises(NotFoundError):
        engine.search(Query(image_id=12345))


def test_box_query_and_threshold(engine: SearchEngine, photos: Path) -> None:
    path = sorted(photos.iterdir())[2]
    w, h = Image.open(path).size
    res = engine.search(Query(image=path, box=(0, 0, w / 2, h / 2)), k=4)
    assert res.query_box == (0, 0, w / 2, h / 2) and len(res.hits) == 4
    strict = engine.search(Query(image=path), k=10, threshold=0.999)
    assert 1 <= len(strict.hits) <= 3 and all(hit.score >= 0.999 for hit in strict.hits)
    with pytest.raises(ImsearchError, match="empty"):
        engine.search(Query(image=path, box=(10, 10, 5, 5)))


def test_broken_query_image_is_a_clear_error(engine: SearchEngine) -> None:
    with pytest.raises(ImageDecodeError, match="not a recognized image format"):
        engine.search(Query(image=b"not an image"))
    with pytest.raises(ImsearchError, match="k must be"):
        engine.search(Query(image_id=1), k=0)


def test_labels_filters_and_object_search(engine: SearchEngine, photos: Path) -> None:
    labels = dict(engine.labels())
    assert labels, "the detector found nothing in 26 real photos"
    top_label = max(labels, key=lambda k: labels[k])
    query = sorted(photos.iterdir())[0]
    res = engine.search(Query(image=query), k=5, flt=SearchFilter(labels_any=(top_label,)))
    assert len(res.hits) == min(5, labels[top_label])
    assert all(any(lab.label == top_label for lab in hit.labels) for hit in res.hits)
    n_images = engine.stats()["images"]  # 25: the exact copy is the same image
    none = engine.search(Query(image=query), k=26, flt=SearchFilter(labels_none=(top_label,)))
    assert len(none.hits) == n_images - labels[top_label]
    objects = engine.search(Query(image=query), k=5, objects=True)
    assert len(objects.hits) == 5
    assert any(hit.box is not None for hit in objects.hits) or engine.collection.count("region") == 0


def test_reranking_options(engine: SearchEngine, photos: Path) -> None:
    query = sorted(photos.iterdir())[7]
    plain = engine.search(Query(image=query), k=5)
    aqe = engine.search(Query(image=query), k=5, rerank=RerankOptions(aqe_n=2))
    dba = engine.search(Query(image=query), k=5, rerank=RerankOptions(dba_n=2, shortlist=20))
    for res in (aqe, dba):
        assert len(res.hits) == 5 and res.hits[0].image_id == plain.hits[0].image_id
        assert all(a.score >= b.score - 1e-6 for a, b in zip(res.hits, res.hits[1:], strict=False))


def test_duplicates_groups(engine: SearchEngine, photos: Path) -> None:
    groups = engine.duplicates(0.97)
    original = str(sorted(photos.iterdir())[0])
    match = [g for g in groups if original in g.paths or str(photos / "zz_exact_copy.jpg") in g.paths]
    assert match, groups
    # the exact copy is the same image (same content hash); the recompressed one is a near duplicate
    assert str(photos / "zz_recompressed.jpg") in match[0].paths
    with pytest.raises(ImsearchError):
        engine.duplicates(1.5)


def test_stats(engine: SearchEngine) -> None:
    st = engine.stats()
    assert st["images"] == 25 and st["files"] == 26 and st["vectors"]["image"] == 25
    assert st["index"]["image"]["size"] == 25 and st["database"] == "sqlite"
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), (200, 10, 10)).save(buf, format="PNG")
    assert len(engine.search(Query(image=buf.getvalue()), k=3).hits) == 3
    assert np.isfinite([h.score for h in engine.search(Query(image=buf.getvalue()), k=3).hits]).all()
