"""Paging through one ranking: pages concatenated equal one big search, with and without filters, ties by id."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest

from retrieval.collection import Collection
from retrieval.errors import ImsearchError
from retrieval.filters import SearchFilter
from retrieval.search import MAX_K, Query, SearchEngine, SearchResult
from retrieval.store import catalog
from tests import imagefactory as f
from tests.retrieval.collection_data import synthetic_images, tiny_model

N = 240
TIED = 9  # images whose descriptors are all equal: a tie group that straddles page boundaries


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SearchEngine]:
    images = synthetic_images(N, seed=3, label_every=6)  # 40 dogs, 200 cats
    twin = images[0].descriptor
    images += [
        dataclasses.replace(img, descriptor=twin, path=f"/photos/tied/{i}.jpg")
        for i, img in enumerate(synthetic_images(TIED, seed=9, prefix="tied"))
    ]
    col = Collection.open(tmp_path_factory.mktemp("paging") / "data", model=tiny_model())
    col.write(images)
    eng = SearchEngine(col)
    yield eng
    eng.close()


def pages(engine: SearchEngine, query: Query, k: int, limit: int, **kw: object) -> list[SearchResult]:
    out, offset = [], 0
    while offset < limit:
        res = engine.search(query, k=min(k, limit - offset), offset=offset, **kw)  # type: ignore[arg-type]
        assert res.offset == offset
        out.append(res)
        if res.next_offset is None:
            break
        assert res.next_offset == offset + len(res.hits)
        offset = res.next_offset
    return out


def flat(results: list[SearchResult]) -> list[tuple[int, float]]:
    return [(h.image_id, h.score) for r in results for h in r.hits]


def first_id(engine: SearchEngine) -> int:
    return int(engine.collection.index_ids("image")[0])


@pytest.mark.parametrize("k", [1, 7, 10])
def test_pages_concatenated_equal_one_big_search(engine: SearchEngine, k: int) -> None:
    query = Query(image_id=first_id(engine))
    big = engine.search(query, k=80)
    assert big.next_offset == 80
    paged = flat(pages(engine, query, k, 80))
    assert paged == [(h.image_id, h.score) for h in big.hits]
    assert len({i for i, _ in paged}) == 80


def test_ties_are_ranked_by_id_across_page_boundaries(engine: SearchEngine) -> None:
    ids = engine.collection.index_ids("image")
    vectors = engine.collection.reconstruct("image", ids)
    twin = synthetic_images(1, seed=3)[0].descriptor
    tied = sorted(int(i) for i, v in zip(ids, vectors, strict=True) if np.array_equal(v, twin))
    assert len(tied) == TIED + 1
    query = Query(image_id=tied[-1])
    for k in (1, 2, 4):
        got = flat(pages(engine, query, k, 30))
        assert [i for i, _ in got[: len(tied)]] == tied, k
        assert len({s for _, s in got[: len(tied)]}) == 1  # one tie group, ordered by id
        assert got == [(h.image_id, h.score) for h in engine.search(query, k=30).hits]


@pytest.mark.parametrize(
    "flt",
    [SearchFilter(labels_any=("dog",)), SearchFilter(labels_none=("dog",)), SearchFilter(path_prefix="/photos/img/")],
    ids=["dogs", "no-dogs", "prefix"],
)
def test_pages_with_filters_equal_one_filtered_search(engine: SearchEngine, flt: SearchFilter) -> None:
    query = Query(image_id=first_id(engine))
    big = engine.search(query, k=60, flt=flt)
    paged = pages(engine, query, 8, 60, flt=flt)
    assert flat(paged) == [(h.image_id, h.score) for h in big.hits]
    allowed = set(engine.collection.read(catalog.resolve_filter, space="image", flt=flt).tolist())
    assert {i for i, _ in flat(paged)} <= allowed


def test_the_last_page_says_there_is_no_more(engine: SearchEngine) -> None:
    dogs = SearchFilter(labels_any=("dog",))
    query = Query(image_id=first_id(engine))
    results = pages(engine, query, 7, 1000, flt=dogs, exclude_query=True)
    dog_ids = engine.collection.read(catalog.resolve_filter, space="image", flt=dogs)
    n_dogs = len(np.setdiff1d(dog_ids, [first_id(engine)]))
    assert n_dogs >= 30
    assert sum(len(r.hits) for r in results) == n_dogs
    assert results[-1].next_offset is None and all(r.next_offset is not None for r in results[:-1])
    beyond = engine.search(query, k=5, offset=n_dogs, flt=dogs, exclude_query=True)
    assert beyond.hits == [] and beyond.next_offset is None
    # exactly a page's worth left: no next page
    exact = engine.search(query, k=7, offset=n_dogs - 7, flt=dogs, exclude_query=True)
    assert len(exact.hits) == 7 and exact.next_offset is None


def test_threshold_and_exclusion_apply_to_every_page(engine: SearchEngine) -> None:
    query = Query(image_id=first_id(engine))
    big = engine.search(query, k=40, threshold=0.0, exclude_query=True)
    paged = flat(pages(engine, query, 6, 40, threshold=0.0, exclude_query=True))
    assert paged == [(h.image_id, h.score) for h in big.hits]
    assert first_id(engine) not in {i for i, _ in paged} and all(s >= 0.0 for _, s in paged)


def test_offset_limits_are_clear_errors(engine: SearchEngine) -> None:
    query = Query(image_id=first_id(engine))
    with pytest.raises(ImsearchError, match="offset"):
        engine.search(query, k=10, offset=MAX_K - 5)
    with pytest.raises(ImsearchError, match="offset"):
        engine.search(query, k=10, offset=-1)
    last = engine.search(query, k=10, offset=MAX_K - 10)  # exactly at the limit: allowed (and empty here)
    assert last.hits == [] and last.next_offset is None


def test_pages_of_a_query_by_image(engine: SearchEngine) -> None:
    photo = f.real_photos(1)[0]
    query = Query(image=photo)
    big = engine.search(query, k=25)
    assert flat(pages(engine, query, 10, 25)) == [(h.image_id, h.score) for h in big.hits]
