"""THE map step: a batch of (key, bytes or path) -> described records, with an error per key.

Recipe (the only place that describes an image for the collection): read the file (within
``max_bytes``) or take the bytes -> sha256 -> decode (EXIF-rotated, within ``max_pixels``) ->
annotate with the detector / segmenter -> keep boxes at least ``region_min_score`` sure ->
descriptor + one region descriptor per kept box (and per box given with the item) -> labels
-> :class:`~retrieval.collection.IndexedImage`.

:class:`Describer` is built once from one :class:`~retrieval.ingest.settings.IngestSettings`
and holds no global state. It pickles to its settings alone (the model travels as a file
path), so Ray can ship it to workers, where the model, detector and segmenter are loaded
once, on first use. The local pipeline, the API's uploads and index jobs, ``reindex`` and the
Ray runner all call it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import stat
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.collection import IndexedImage, RegionOut
from retrieval.errors import ImageDecodeError, ImsearchError
from retrieval.imageio import DecodedImage, decode_image
from retrieval.ingest.settings import IngestSettings
from retrieval.models.descriptor import Box
from retrieval.store.catalog import LabelStat

if TYPE_CHECKING:
    from retrieval.models.descriptor import DescriptorModel
    from retrieval.models.extract import Extractor, ExtractResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceItem:
    """One image to describe. Exactly one of ``data`` / ``path`` is required, or both: the bytes
    already read from ``path`` (then ``size_bytes`` / ``mtime_ns`` are what was read).

    ``boxes`` (original-image pixels) get region descriptors besides the detected ones, in
    this order first (``reindex`` re-describes the known regions this way). ``sha256``: the
    hex digest of ``data`` when the caller already computed it (the local pipeline's reader
    hashes every file to find duplicates): not computed a second time.
    """

    key: Hashable
    data: bytes | None = None
    path: str | None = None
    size_bytes: int | None = None
    mtime_ns: int | None = None
    boxes: tuple[Box, ...] = ()
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.data is None and self.path is None:
            raise ImsearchError(f"item {self.key!r} has neither bytes nor a path")
        if self.sha256 is not None and self.data is None:
            raise ImsearchError(f"item {self.key!r}: a sha256 is taken only with the bytes it was computed from")

    @property
    def name(self) -> str:
        return self.path or f"item {self.key!r}"


@dataclass(frozen=True)
class Described:
    """The outcome for one :class:`SourceItem`: the record to write, or why it failed."""

    key: Hashable
    image: IndexedImage | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, eq=False)
class _Read:
    item: SourceItem
    data: bytes
    sha256: str
    size_bytes: int
    mtime_ns: int | None


class Describer:
    """The map step (see the module docstring). Thread-safe; ``describe_one`` is the low-latency
    single-image path, ``__call__`` the batch path, ``iter_describe`` the streaming one."""

    def __init__(
        self,
        settings: IngestSettings,
        *,
        model: DescriptorModel | None = None,
        extractor: Extractor | None = None,
        detector: Any = None,
        segmenter: Any = None,
        pause: Callable[[], None] | None = None,
    ) -> None:
        """``model`` / ``extractor`` / ``detector`` / ``segmenter`` given here are used as they are
        (e.g. the API shares its search extractor); what is missing is built from ``settings`` on
        first use. ``pause`` is called before each layer of the network (a background job giving
        the CPU to searches: :meth:`Extractor.add_pause_points`)."""
        if model is None and extractor is None and settings.model is None:
            raise ImsearchError("the map step needs a model: IngestSettings(model=FILE), or pass model=")
        if detector is not None and not settings.detect:
            settings = settings.with_(detect=True)
        if segmenter is not None and not settings.segment:
            settings = settings.with_(segment=True)
        self.settings = settings
        self._model = model if model is not None else (extractor.model if extractor is not None else None)
        self._extractor = extractor
        self._detector = detector
        self._segmenter = segmenter
        self._pause = pause
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ pickling (Ray)
    def __getstate__(self) -> dict[str, Any]:
        if self.settings.model is None:
            raise ImsearchError("a Describer travels only with IngestSettings(model=FILE) (the model file path)")
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"])  # type: ignore[misc]

    # ------------------------------------------------------------------ heavy parts, built once
    @property
    def model(self) -> DescriptorModel:
        with self._lock:
            if self._model is None:
                from retrieval.models.descriptor import DescriptorModel

                assert self.settings.model is not None  # checked in __init__
                self._model = DescriptorModel.load(self.settings.model)
            return self._model

    @property
    def extractor(self) -> Extractor:
        model = self.model
        with self._lock:
            if self._extractor is None:
                from retrieval.models.extract import Extractor

                st = self.settings
                self._extractor = Extractor(
                    model,
                    device=st.device,
                    precision=st.precision,
                    engine=st.engine,
                    batch_size=st.batch_size,
                    workers=st.workers,
                    max_pixels=st.max_pixels,
                    buffer_images=st.buffer_images,
                )
                if self._pause is not None:
                    self._extractor.add_pause_points(self._pause)
            return self._extractor

    def _annotators(self) -> tuple[Any, Any]:
        st = self.settings
        with self._lock:
            if st.detect and self._detector is None:
                from retrieval.vision import create_detector

                self._detector = create_detector(st.detector, **st.vision_options(st.detector))
            if st.segment and self._segmenter is None:
                from retrieval.vision import create_segmenter

                self._segmenter = create_segmenter(st.segmenter, **st.vision_options(st.segmenter))
            return (self._detector if st.detect else None), (self._segmenter if st.segment else None)

    def warm_up(self) -> None:
        """Load the model and annotators now (an actor's constructor; a server's start-up)."""
        _ = self.extractor
        if self.settings.annotates:
            self._annotators()

    # ------------------------------------------------------------------ the map step
    def __call__(self, batch: Sequence[SourceItem]) -> list[Described]:
        """Describe a batch; results in input order, one per item."""
        by_key = {d.key: d for d in self.iter_describe(batch)}
        return [by_key[item.key] for item in batch]

    def iter_describe(self, items: Iterable[SourceItem]) -> Iterator[Described]:
        """Stream results (not in input order) for any number of items, with bounded memory."""
        from retrieval.models.extract import ExtractItem

        extractor = self.extractor
        annotator = self._annotate if self.settings.annotates else None
        failed: list[Described] = []

        def sources() -> Iterator[ExtractItem]:
            for item in items:
                read = self._read(item)
                if isinstance(read, Described):
                    failed.append(read)
                    continue
                yield ExtractItem(read, read.data, item.boxes)

        for res in extractor.iter_extract(sources(), annotator=annotator):
            while failed:
                yield failed.pop()
            yield self._described(res)
        yield from failed

    def describe_one(self, item: SourceItem) -> Described:
        """One image on the calling thread (no thread pool: the low-latency path of an upload)."""
        read = self._read(item)
        if isinstance(read, Described):
            return read
        extractor = self.extractor
        boxes = list(item.boxes)
        source: bytes | DecodedImage = read.data
        annotation = None
        if self.settings.annotates:
            meta = extractor.meta
            try:
                decoded = decode_image(
                    read.data,
                    name=item.name,
                    max_side=math.ceil(meta.max_side * max(meta.scales)),
                    max_pixels=self.settings.max_pixels,
                )
            except ImageDecodeError as exc:
                return Described(item.key, error=exc.reason)
            extra, annotation = self._annotate(decoded)
            boxes.extend(extra)
            source = decoded
        res = extractor.extract_one(source, boxes=boxes)
        res.key = read
        if annotation is not None:
            res.annotation = annotation
        return self._described(res)

    # ------------------------------------------------------------------ steps
    def _read(self, item: SourceItem) -> _Read | Described:
        limit = self.settings.max_bytes
        if item.data is not None:
            if len(item.data) > limit:
                return Described(item.key, error=f"{len(item.data)} bytes, over the limit of {limit}")
            size = item.size_bytes if item.size_bytes is not None else len(item.data)
            sha = item.sha256 if item.sha256 is not None else hashlib.sha256(item.data).hexdigest()
            return _Read(item, item.data, sha, size, item.mtime_ns)
        assert item.path is not None  # checked by SourceItem
        st = self.settings
        got = read_file(item.path, limit, follow_symlinks=st.follow_symlinks, roots=st.roots)
        if isinstance(got, str):
            return Described(item.key, error=got)
        data, size, mtime_ns = got
        return _Read(item, data, hashlib.sha256(data).hexdigest(), size, mtime_ns)

    def _annotate(self, decoded: DecodedImage) -> tuple[Sequence[Box], Any]:
        """Detection / segmentation on the decoded pixels (runs in decode workers)."""
        from retrieval.vision import annotate

        detector, segmenter = self._annotators()
        detections, segmentation = annotate(decoded, detector, segmenter)
        keep = [d for d in detections if d.score >= self.settings.region_min_score]
        return [d.box for d in keep], {"detections": detections, "regions": keep, "segmentation": segmentation}

    def _described(self, res: ExtractResult) -> Described:
        read: _Read = res.key  # type: ignore[assignment]
        item = read.item
        if res.error is not None or res.descriptor is None or res.info is None:
            return Described(item.key, error=res.error or "no descriptor")
        regions: list[RegionOut] = []
        labels: dict[str, list[LabelStat]] = {}
        sources: list[str] = []
        n_given = len(item.boxes)
        if res.regions is not None and n_given:
            regions.extend(
                RegionOut(box, "manual", vec)
                for box, vec in zip(res.boxes[:n_given], res.regions[:n_given], strict=True)
            )
        ann = res.annotation
        if ann is not None:
            from retrieval.vision import image_labels

            if res.regions is not None and len(ann["regions"]):
                regions.extend(
                    RegionOut(box, "detector", vec, d.label, d.score)
                    for box, vec, d in zip(res.boxes[n_given:], res.regions[n_given:], ann["regions"], strict=True)
                )
            for lab in image_labels(
                ann["detections"], ann["segmentation"], image_size=(res.info.width, res.info.height)
            ):
                labels.setdefault(lab.source, []).append(
                    LabelStat(lab.label, lab.max_score, lab.area_fraction, lab.count)
                )
        if self.settings.detect:
            sources.append("detector")
            labels.setdefault("detector", [])
        if self.settings.segment:
            labels.setdefault("segmenter", [])
        image = IndexedImage(
            sha256=read.sha256,
            size_bytes=read.size_bytes,
            width=res.info.width,
            height=res.info.height,
            format=res.info.format,
            descriptor=res.descriptor,
            exif_time=res.info.exif_time,
            path=item.path,
            mtime_ns=read.mtime_ns,
            regions=tuple(regions),
            labels=labels,
            replace_sources=tuple(sources),
        )
        return Described(item.key, image=image)


def read_file(
    path: str, limit: int, *, follow_symlinks: bool = False, roots: Sequence[str] | None = None
) -> tuple[bytes, int, int] | str:
    """``(bytes, size, mtime_ns)`` of a regular file of at most ``limit`` bytes, or why not (a
    sentence that never quotes the file). A symbolic link is not followed (``O_NOFOLLOW``) unless
    asked, a FIFO or device is never read, size and time come from the descriptor that was read.
    With ``roots``, the file must resolve inside one of them, checked again on the open file
    (:func:`retrieval.files.open_confined`: a server's allowed roots)."""
    if roots is not None:
        return _read_confined(path, limit, roots)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return "the file is gone (deleted or moved since it was listed)"
    except PermissionError:
        return "permission denied (cannot read the file)"
    except OSError as exc:
        if os.path.islink(path):
            return "a symbolic link (not followed; pass --follow-symlinks to index what it points to)"
        return f"cannot open the file: {exc.strerror or exc}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file (a FIFO, device or folder): not read"
        if st.st_size > limit:
            return f"file is {st.st_size} bytes, over the limit of {limit}"
        if st.st_size == 0:
            return "empty file (0 bytes)"
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
    finally:
        os.close(fd)
    if len(data) > limit:
        return f"the file grew over the limit of {limit} bytes while it was read"
    return data, len(data), st.st_mtime_ns


def _read_confined(path: str, limit: int, roots: Sequence[str]) -> tuple[bytes, int, int] | str:
    from retrieval.files import FileAccessError, open_confined

    try:
        _, fh = open_confined(path, [Path(r) for r in roots])
    except FileAccessError as exc:
        return str(exc)
    with fh:
        try:
            st = os.fstat(fh.fileno())
            if st.st_size > limit:
                return f"file is {st.st_size} bytes, over the limit of {limit}"
            if st.st_size == 0:
                return "empty file (0 bytes)"
            data = fh.read(limit + 1)
        except OSError as exc:
            return f"cannot read the file: {exc.strerror or exc}"
    if len(data) > limit:
        return f"the file grew over the limit of {limit} bytes while it was read"
    return data, len(data), st.st_mtime_ns


def with_location(image: IndexedImage, **where: Any) -> IndexedImage:
    """The record with its location changed (``path``, ``mtime_ns``, ``stored_path``)."""
    return replace(image, **where)
