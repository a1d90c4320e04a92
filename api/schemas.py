"""Request and response bodies (pydantic), apart from the catalog's tables and records.

Image, region and job ids are 64-bit integers; responses give them as decimal *strings*
because JavaScript numbers lose precision above 2**53. Requests accept either form.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from api.settings import MAX_ID

MAX_LABELS = 32
MAX_COORD = 1_000_000.0

LabelName = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=64)]
ImageIdIn = Annotated[int, Field(ge=0, le=MAX_ID, description="an image id (integer, or its decimal string)")]
IdOut = Annotated[str, Field(pattern=r"^[0-9]+$", description="a 64-bit id as a decimal string")]
Coord = Annotated[float, Field(ge=0.0, le=1_000_000.0)]
Box = tuple[float, float, float, float]
BoxIn = tuple[Coord, Coord, Coord, Coord]
#: calibrated match levels, strongest first (retrieval.calibrate.LEVELS; tested equal)
MatchLevel = Literal["copy", "near", "similar"]
MIN_MATCH_DESCRIPTION = (
    "only results of this calibrated match level or stronger (copy > near > similar): a minimum score applied "
    "inside the search, so pages stay one ranking; needs a calibrated collection (`imsearch calibrate`; else 409) "
    "and a plain search (no box, objects or re-ranking)"
)


class Schema(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")


def check_box(box: Box) -> Box:
    """Four finite pixel positions; whether the box is non-empty inside the image is the engine's check."""
    if not all(math.isfinite(v) and 0.0 <= v <= MAX_COORD for v in box):
        raise ValueError(f"box coordinates must be finite pixel positions within 0..{MAX_COORD:.0f}")
    return box


# ---------------------------------------------------------------------------- search requests


class LabelFilter(Schema):
    """Which images may be returned, by their detected labels."""

    any: list[LabelName] = Field(default_factory=list, max_length=MAX_LABELS, description="at least one of these")
    all: list[LabelName] = Field(default_factory=list, max_length=MAX_LABELS, description="every one of these")
    none: list[LabelName] = Field(default_factory=list, max_length=MAX_LABELS, description="none of these")
    min_score: float = Field(default=0.0, ge=0.0, le=1.0, description="a label counts from this confidence on")
    min_area: float = Field(default=0.0, ge=0.0, le=1.0, description="a label must cover at least this fraction")


class Rerank(Schema):
    """Re-ranking: alpha query expansion (``aqe``) and database-side augmentation (``dba``)."""

    aqe: int = Field(default=0, ge=0, le=50, description="expand the query with its top N results (0: off)")
    dba: int = Field(default=0, ge=0, le=50, description="average each candidate with its N neighbours (0: off)")
    alpha: float = Field(default=3.0, ge=0.0, le=50.0, description="weight exponent of the neighbours")


class SearchOptions(Schema):
    k: int = Field(default=10, ge=1, le=1000, description="number of results (the server may cap it lower)")
    offset: int = Field(
        default=0, ge=0, le=999, description="skip this many results of the ranking (paging: the previous next_offset)"
    )
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0, description="only results scoring at least this")
    filters: LabelFilter = LabelFilter()
    box: BoxIn | None = Field(
        default=None, description="search with this region of the query: [x0, y0, x1, y1] pixels, x0 < x1, y0 < y1"
    )
    objects: bool = Field(default=False, description="also match detected objects inside indexed images")
    rerank: Rerank = Rerank()
    min_match: MatchLevel | None = Field(default=None, description=MIN_MATCH_DESCRIPTION)


class SearchByIdRequest(SearchOptions):
    image_id: ImageIdIn
    exclude_query: bool = Field(default=True, description="leave the query image itself out of the results")


class SearchForm(Schema):
    """The options of a search by uploaded image, as multipart form fields."""

    k: int = Field(default=10, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=999)
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    labels_any: list[LabelName] = Field(default_factory=list, max_length=MAX_LABELS)
    labels_all: list[LabelName] = Field(default_factory=list, max_length=MAX_LABELS)
    labels_none: list[LabelName] = Field(default_factory=list, max_length=MAX_LABELS)
    min_score: float = Field(default=0.0, ge=0.0, le=1.0)
    min_area: float = Field(default=0.0, ge=0.0, le=1.0)
    box: str | None = Field(
        None,
        max_length=200,
        description="x0,y0,x1,y1 in pixels of the uploaded image (after EXIF rotation)",
        examples=["10,20,200,180"],
    )
    objects: bool = False
    aqe: int = Field(default=0, ge=0, le=50)
    dba: int = Field(default=0, ge=0, le=50)
    alpha: float = Field(default=3.0, ge=0.0, le=50.0)
    min_match: MatchLevel | None = Field(default=None, description=MIN_MATCH_DESCRIPTION)

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")

    @field_validator("box")
    @classmethod
    def _box(cls, text: str | None) -> str | None:
        if text is None or not text.strip():
            return None
        parse_box(text)
        return text

    def to_options(self) -> SearchOptions:
        return SearchOptions(
            k=self.k,
            offset=self.offset,
            threshold=self.threshold,
            filters=LabelFilter(
                any=self.labels_any,
                all=self.labels_all,
                none=self.labels_none,
                min_score=self.min_score,
                min_area=self.min_area,
            ),
            box=parse_box(self.box) if self.box else None,
            objects=self.objects,
            rerank=Rerank(aqe=self.aqe, dba=self.dba, alpha=self.alpha),
            min_match=self.min_match,
        )


def parse_box(text: str) -> Box:
    try:
        parts = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"box must be four numbers x0,y0,x1,y1, got {text[:60]!r}") from None
    if len(parts) != 4:
        raise ValueError(f"box must be four numbers x0,y0,x1,y1, got {len(parts)}")
    return check_box((parts[0], parts[1], parts[2], parts[3]))


# ---------------------------------------------------------------------------- responses


class LabelPublic(BaseModel):
    label: str
    source: str = Field(description="detector or segmenter")
    score: float
    area: float = Field(description="fraction of the image the label covers")


class RegionPublic(BaseModel):
    id: IdOut
    box: Box
    source: str
    label: str | None
    score: float | None


class ImagePublic(BaseModel):
    id: IdOut
    sha256: str
    path: str | None = Field(description="where the image was indexed from (None for uploads)")
    stored: bool = Field(description="the original was uploaded and is kept by the server")
    width: int
    height: int
    format: str
    size_bytes: int
    exif_time: datetime | None
    added_at: datetime
    labels: list[LabelPublic]
    regions: list[RegionPublic]
    files: list[str] = Field(description="every indexed file with this content")
    original_url: str
    thumbnail_url: str


class HitPublic(BaseModel):
    image_id: IdOut
    score: float
    path: str | None
    width: int
    height: int
    labels: list[LabelPublic]
    box: Box | None = Field(description="object search: the matching region of this image")
    region_label: str | None
    thumbnail_url: str
    original_url: str
    match: MatchLevel | None = Field(
        default=None,
        description="the calibrated match level of the score: copy, near (duplicate) or similar; null below "
        "similar, on an uncalibrated collection, and for scores the calibration did not measure (a box, an "
        "object match, re-ranking)",
    )


class QueryPublic(BaseModel):
    image_id: IdOut | None
    box: Box | None


class SearchResponse(BaseModel):
    query: QueryPublic
    k: int
    offset: int = Field(description="rank (0-based) of the first hit in the whole ranking")
    next_offset: int | None = Field(
        description="the offset of the next page of the same search (None: there are no more results)"
    )
    took_ms: float
    timings: dict[str, float] = Field(description="describe_ms (decode + model), search_ms, metadata_ms")
    hits: list[HitPublic]


class LabelCount(BaseModel):
    label: str
    count: int = Field(description="number of images with this label")


class LabelsResponse(BaseModel):
    min_score: float
    labels: list[LabelCount]


class DuplicateGroupPublic(BaseModel):
    image_ids: list[IdOut]
    paths: list[str | None]
    min_score: float


class DuplicatesResponse(BaseModel):
    threshold: float
    threshold_source: Literal["request", "calibration", "default"] = Field(
        description="request: the threshold asked for; calibration: the collection's calibrated copy threshold; "
        "default: 0.95 (the collection is not calibrated: run `imsearch calibrate`)"
    )
    total_groups: int
    groups: list[DuplicateGroupPublic]


ServerPath = Annotated[str, StringConstraints(min_length=1, max_length=4096, pattern=r"^/[^\x00]*$")]


class AddPathRequest(Schema):
    path: ServerPath = Field(description="absolute path of an image file on the server")


class JobCreate(Schema):
    path: ServerPath = Field(description="absolute folder (or file) path on the server")
    detect: bool | None = Field(default=None, description="run the detector (default: the server's setting)")
    segment: bool | None = Field(default=None, description="run the segmenter (default: the server's setting)")
    prune: bool = Field(default=False, description="forget indexed files under the path that were deleted")


class JobPublic(BaseModel):
    id: str
    kind: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    params: dict[str, Any]
    total: int = Field(description="image files found so far")
    done: int = Field(description="images newly indexed")
    failed: int = Field(description="files that could not be indexed")
    skipped: int = Field(description="unchanged, duplicate or known-bad files")
    message: str | None
    created_at: datetime
    updated_at: datetime
    finished: bool


class JobsResponse(BaseModel):
    jobs: list[JobPublic]


class IndexInfo(BaseModel):
    kind: str
    factory: str
    size: int


class StatsResponse(BaseModel):
    images: int
    files: int
    regions: int
    labels: int
    failures: int
    vectors: dict[str, int]
    model: str
    model_fingerprint: str
    model_engine: str = Field(description="what runs the network for searches: torch or onnxruntime")
    dim: int
    index: dict[str, IndexInfo]
    database: str
    read_only: bool
    running_job: JobPublic | None
    calibration: dict[str, float | None] | None = Field(
        default=None, description="calibrated thresholds of the match levels (null: not calibrated)"
    )


class LevelPublic(BaseModel):
    level: MatchLevel
    threshold: float | None = Field(description="scores at least this match the level (null: none was found)")
    precision: float | None = Field(description="on the calibration sample: copies among the pairs above")
    precision_lower: float | None = Field(description="the conservative (Wilson) bound of that precision")
    recall: float = Field(description="on the calibration sample: copies scoring above, of all copies")
    positives_above: int
    negatives_above: int


class CalibrationPublic(BaseModel):
    model_fingerprint: str
    created: str
    levels: list[LevelPublic]
    photos: int = Field(description="sampled photos whose edited copies were scored")
    copies_per_photo: int
    positives: int = Field(description="copy-vs-original scores")
    negatives: int = Field(description="copy vs other-photo scores (each copy's top other photos)")
    collection_size: int = Field(description="images in the collection when calibrated")
    seed: int
    copy_precision: float
    near_precision: float


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    images: int


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _status(self) -> Problem:
        if not 400 <= self.status <= 599:
            raise ValueError("a problem's status is an HTTP error status")
        return self


# ---------------------------------------------------------------------------- browsing (GET /images, /failures)

BrowseSort = Literal["added", "-added", "exif_time", "-exif_time", "path"]


class ImageSummary(BaseModel):
    """An image in a browse page: enough for a grid card; ``GET /images/{id}`` has the rest."""

    id: IdOut
    path: str | None = Field(description="where the image was indexed from (None for uploads)")
    width: int
    height: int
    format: str
    size_bytes: int
    exif_time: datetime | None
    added_at: datetime
    labels: list[str] = Field(description="detected labels, most confident first")
    thumbnail_url: str
    original_url: str


class ImagesResponse(BaseModel):
    offset: int
    limit: int
    sort: BrowseSort
    total: int = Field(description="images passing the filter")
    next_offset: int | None = Field(description="the offset of the next page (None: this is the last)")
    items: list[ImageSummary]
    facets: list[LabelCount] | None = Field(
        description="label counts among the images passing the filter (when asked with facets=true)"
    )


class FailurePublic(BaseModel):
    path: str
    reason: str
    at: datetime


class FailuresResponse(BaseModel):
    prefix: str
    failures: list[FailurePublic]
