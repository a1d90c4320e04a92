"""Search by an uploaded image (multipart) or by an indexed image id (JSON).

Hits carry the calibrated ``match`` level; ``min_match`` keeps that level and stronger. A
collection with no calibration for its model answers ``min_match`` with a 409 ``not-calibrated``
problem: the request is well formed, the collection's state refuses it (run ``imsearch calibrate``).
"""

from __future__ import annotations

import functools
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile

from api.compute import ModelRunner
from api.deps import EngineDep, ModelDep, ReadAccess, SettingsDep
from api.errors import ApiError
from api.ingest import check_image
from api.openapi import READ_ERRORS, problems
from api.schemas import HitPublic, SearchByIdRequest, SearchForm, SearchOptions, SearchResponse
from api.settings import Settings
from api.views import search_response
from retrieval.calibrate import NotCalibratedError
from retrieval.errors import ImageDecodeError
from retrieval.filters import SearchFilter
from retrieval.rerank import RerankOptions
from retrieval.search import MAX_K, Query, SearchEngine, SearchResult

router = APIRouter(prefix="/search", tags=["search"], dependencies=ReadAccess)


def read_upload(file: UploadFile, settings: Settings) -> bytes:
    """The uploaded bytes, refusing more than ``max_upload_bytes``."""
    data = file.file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise ApiError(
            413,
            f"the upload is over the limit of {settings.max_upload_bytes} bytes; send a smaller image",
            kind="upload-too-large",
            title="Upload too large",
        )
    return data


def run_search(
    engine: SearchEngine,
    model: ModelRunner,
    settings: Settings,
    query: Query,
    opts: SearchOptions,
    *,
    exclude_query: bool,
) -> SearchResult:
    """The search; on the model thread when the query needs the model (an image, or a box)."""
    if opts.min_match is not None:  # a level this collection cannot serve: refused before anything else
        try:
            engine.min_match_score(opts.min_match)
        except NotCalibratedError as exc:
            raise ApiError(409, str(exc), kind="not-calibrated", title="Collection not calibrated") from None
    if opts.k > settings.max_k:
        raise ApiError(
            422, f"k={opts.k} is over this server's limit of {settings.max_k}", kind="k-too-large", title="k too large"
        )
    if opts.offset + opts.k > MAX_K:
        raise ApiError(
            422, f"offset + k = {opts.offset + opts.k} is beyond the deepest result a search serves ({MAX_K}); "
            "narrow the search with filters or a threshold", kind="offset-too-large", title="Offset too large",
        )
    flt = SearchFilter(
        labels_any=tuple(opts.filters.any),
        labels_all=tuple(opts.filters.all),
        labels_none=tuple(opts.filters.none),
        min_score=opts.filters.min_score,
        min_area=opts.filters.min_area,
    )
    rerank = RerankOptions(aqe_n=opts.rerank.aqe, dba_n=opts.rerank.dba, alpha=opts.rerank.alpha)
    search = functools.partial(
        engine.search, query, k=opts.k, offset=opts.offset, threshold=opts.threshold, flt=flt, rerank=rerank,
        objects=opts.objects, exclude_query=exclude_query, min_match=opts.min_match,
    )
    if query.image is not None or query.box is not None:
        return model.run(search)
    return search()


def with_match(response: SearchResponse, result: SearchResult) -> SearchResponse:
    """The hits' calibrated match levels (``search_response`` builds the hits in the result's order)."""
    hits: list[HitPublic] = response.hits
    for public, hit in zip(hits, result.hits, strict=True):
        public.match = hit.match  # type: ignore[assignment]  # a level of retrieval.calibrate.LEVELS
    return response


@router.post(
    "/image",
    summary="Search with an uploaded photo",
    responses=problems(*READ_ERRORS, 409, 413, 415),
)
def search_by_image(
    *,
    request: Request,
    engine: EngineDep,
    model: ModelDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="the query photo (JPEG, PNG, WebP, GIF, BMP, TIFF)")],
    form: Annotated[SearchForm, Form()],
) -> SearchResponse:
    """The most similar indexed images to the uploaded photo (or to a box on it).

    Options are form fields: ``k``, ``offset`` (paging: the previous response's ``next_offset``),
    ``threshold``, ``labels_any`` / ``labels_all`` / ``labels_none`` (repeat the field for several
    labels), ``min_score``, ``min_area``, ``box`` (``x0,y0,x1,y1``), ``objects``, ``aqe``, ``dba``, ``alpha``.
    """
    data = read_upload(file, settings)
    name = file.filename or "the upload"
    check_image(data, name, settings)
    opts = form.to_options()
    try:
        result = run_search(engine, model, settings, Query(image=data, box=opts.box), opts, exclude_query=False)
    except ImageDecodeError as exc:  # name the upload, not "query image"
        raise ImageDecodeError(name, exc.reason) from None
    return with_match(search_response(request, result, k=opts.k, image_id=None), result)


@router.post("/id", summary="Search with an indexed image", responses=problems(*READ_ERRORS, 404, 409))
def search_by_id(
    *, request: Request, engine: EngineDep, model: ModelDep, settings: SettingsDep, body: SearchByIdRequest
) -> SearchResponse:
    """The most similar images to an indexed one (or to a box on it), the same options as a JSON body."""
    query = Query(image_id=body.image_id, box=body.box)
    result = run_search(engine, model, settings, query, body, exclude_query=body.exclude_query)
    return with_match(search_response(request, result, k=body.k, image_id=body.image_id), result)
