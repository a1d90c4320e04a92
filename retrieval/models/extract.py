"""Fast batched extraction: sources in, descriptors out, streaming with bounded memory.

Decoding and resizing run in a thread pool (Pillow releases the GIL) while the model
runs batches on the caller's thread. Each image is resized so that its long side is
``max_side * scale`` and both sides are multiples of the backbone stride; images of equal
input size are batched together, so no padding ever enters the network and an image's
descriptor never depends on which other images shared its batch. Multi-scale
descriptors are the L2-normalized sum over scales (Gordo et al.; Radenović et al.).

On CPU, ``precision="auto"`` runs the backbone in bf16 autocast with channels-last
memory (the head always runs in float32); the tests check the descriptors stay within
tolerance of float32. On CUDA the same code runs with bf16 autocast. ``engine="onnxruntime"``
(CPU) runs the same network in float32 on onnxruntime instead: faster than torch bf16 for
one image at a time (see :mod:`retrieval.models.onnx_backbone`); the API's searches use it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import torch
from PIL import Image

from retrieval.errors import ImageDecodeError, ImsearchError
from retrieval.imageio import DEFAULT_MAX_PIXELS, DecodedImage, ImageSource, decode_image
from retrieval.models.descriptor import Box, DescriptorModel, descriptors_to_numpy
from retrieval.models.fuse import fuse_conv_bn
from retrieval.models.onnx_backbone import OnnxBackbone, onnx_available
from retrieval.models.pooling import l2n
from retrieval.models.whitening import CovarianceAccumulator, WhiteningParams, learn_pca_whitening

logger = logging.getLogger(__name__)

#: An annotator sees each decoded image (in a worker thread) and returns boxes to pool
#: (in original-image pixels) and any payload to hand back with the result.
Annotator = Callable[[DecodedImage], tuple[Sequence[Box], Any]]
#: A feature hook sees each batch's float32 feature maps with the item keys and scale indices.
FeatureHook = Callable[[torch.Tensor, list[Hashable], list[int]], None]


@dataclass(frozen=True)
class ExtractItem:
    """One image to describe: ``key`` comes back with its result."""

    key: Hashable
    source: ImageSource | DecodedImage | np.ndarray
    boxes: tuple[Box, ...] = ()


@dataclass(frozen=True)
class ImageInfo:
    """What decoding learned about an image (no pixels)."""

    width: int
    height: int
    format: str
    mode: str
    exif_time: datetime | None


@dataclass
class ExtractResult:
    """The outcome for one :class:`ExtractItem`: descriptors, or the reason it failed."""

    key: Hashable
    descriptor: np.ndarray | None = None  # (dim,) float32, L2-normalized
    regions: np.ndarray | None = None  # (n_boxes, dim) float32, one row per box
    boxes: tuple[Box, ...] = ()  # the pooled boxes, original-image pixels
    info: ImageInfo | None = None
    annotation: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def input_size(width: int, height: int, max_side: int, scale: float, stride: int) -> tuple[int, int]:
    """Network input ``(width, height)``: long side ``max_side * scale``, both snapped to ``stride``."""
    target = max_side * scale
    ratio = target / max(width, height)

    def snap(v: float) -> int:
        return max(stride, round(v / stride) * stride)

    return snap(width * ratio), snap(height * ratio)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 where the hardware runs it natively (CUDA, or CPUs with AVX-512/AMX), else fp32."""
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision in table:
        if precision == "fp16" and device.type == "cpu":
            raise ImsearchError("fp16 is not supported on CPU; use bf16 or fp32")
        return table[precision]
    if precision != "auto":
        raise ImsearchError(f"unknown precision {precision!r}; use one of auto, fp32, bf16, fp16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    capability = torch.backends.cpu.get_cpu_capability()
    return torch.bfloat16 if "AVX512" in capability or "AMX" in capability else torch.float32


#: ``engine`` choices: ``auto`` is onnxruntime on CPU when installed, else torch
ENGINES = ("auto", "torch", "onnxruntime")


def resolve_engine(engine: str, device: torch.device) -> str:
    """``auto`` -> ``onnxruntime`` on CPU when onnxruntime and onnx are installed, else ``torch``."""
    if engine not in ENGINES:
        raise ImsearchError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if engine == "auto":
        return "onnxruntime" if device.type == "cpu" and onnx_available() else "torch"
    if engine == "onnxruntime" and device.type != "cpu":
        raise ImsearchError(f"engine 'onnxruntime' runs on CPU only; on {device} use engine 'torch'")
    return engine


@dataclass
class _Pending:
    result: ExtractResult
    scales_left: int
    desc: torch.Tensor | None = None
    regions: torch.Tensor | None = None


@dataclass
class _Job:
    slot: int
    scale_index: int
    pixels: np.ndarray  # (h, w, 3) uint8
    boxes: list[Box] = field(default_factory=list)  # in this input's pixels


class Extractor:
    """Batched descriptor extraction with one :class:`DescriptorModel` on one device."""

    def __init__(
        self,
        model: DescriptorModel,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        batch_size: int = 16,
        workers: int | None = None,
        annotator: Annotator | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        channels_last: bool = True,
        fuse: bool = True,
        buffer_images: int = 256,
        engine: str = "torch",
    ) -> None:
        if batch_size < 1:
            raise ImsearchError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.engine = resolve_engine(engine, self.device)
        self.dtype = torch.float32 if self.engine == "onnxruntime" else resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.channels_last = channels_last
        # the network that runs: a folded copy (conv+bn) in channels-last memory; the
        # model itself (its weights, hence its fingerprint) is never modified
        backbone: torch.nn.Module = model.backbone
        if fuse:
            example = torch.rand(1, 3, 2 * model.meta.stride, 2 * model.meta.stride, device=self.device)
            backbone = fuse_conv_bn(backbone, example)
        self.onnx: OnnxBackbone | None = None
        if self.engine == "onnxruntime":
            try:
                self.onnx = OnnxBackbone(backbone, int(model.meta.stride))
                channels_last = self.channels_last = False  # onnxruntime takes NCHW arrays
            except ImsearchError as exc:
                if engine != "auto":
                    raise
                logger.warning("engine auto: %s; running torch instead", exc)
                self.engine = "torch"
                self.dtype = resolve_precision(precision, self.device)
        if channels_last:
            backbone = backbone.to(memory_format=torch.channels_last)
        # bf16 on CPU: weights stored in bf16 rather than autocast, which re-casts around every
        # layer (measured ~30% slower on VGG16); feature maps come back as float32 either way
        self.backbone_dtype = torch.float32
        if self.device.type == "cpu" and self.dtype == torch.bfloat16:
            if backbone is model.backbone:
                backbone = copy.deepcopy(backbone)
            backbone = backbone.to(torch.bfloat16)
            self.backbone_dtype = torch.bfloat16
        self.backbone = backbone
        self.batch_size = batch_size
        # decoded inputs waiting in size buckets: more fills batches better, costs memory
        self.buffer_images = max(buffer_images, 2 * batch_size)
        self.workers = workers if workers is not None else max(1, min(4, (os.cpu_count() or 2)))
        self.annotator = annotator
        self.max_pixels = max_pixels
        self.meta = model.meta
        self.stats = {"decode_s": 0.0, "forward_s": 0.0, "images": 0, "batches": 0}
        #: called with (float32 feature maps, item keys, scale indices) of every batch
        self.feature_hook: FeatureHook | None = None
        logger.info(
            "extractor on %s (%s), %s, batch %d, %d decode workers",
            self.device, self.engine, self.dtype, batch_size, self.workers,
        )

    # ------------------------------------------------------------------ public API
    def extract(self, sources: Sequence[ImageSource | DecodedImage | np.ndarray]) -> np.ndarray:
        """Descriptors ``(n, dim)`` in input order; the first undecodable image raises."""
        out = np.zeros((len(sources), self.meta.dim), dtype=np.float32)
        for res in self.iter_extract(ExtractItem(i, s) for i, s in enumerate(sources)):
            if res.error is not None:
                raise ImageDecodeError(_source_name(sources[int(res.key)]), res.error)  # type: ignore[call-overload]
            out[int(res.key)] = res.descriptor  # type: ignore[call-overload]
        return out

    def extract_one(
        self, source: ImageSource | DecodedImage | np.ndarray, boxes: Sequence[Box] = ()
    ) -> ExtractResult:
        """One image (and optional boxes), on the calling thread; errors come back in ``result.error``.

        No thread pool is involved, so this is the low-latency path for a single query.
        """
        entry, jobs = self._prepare(0, ExtractItem(0, source, tuple(boxes)), self.annotator)
        if entry.result.error is not None:
            return entry.result
        for job in jobs:
            descs, regions = self._forward([job], [0])
            self._accumulate(entry, descs[0], regions[0])
        return self._finish(entry)

    def learn_whitening(
        self,
        sources: Iterable[ImageSource | DecodedImage | np.ndarray],
        dim: int | None = None,
        *,
        power: float = 0.5,
    ) -> WhiteningParams:
        """Learn PCA-whitening from images (every scale; R-MAC: every region vector).

        Streams: only an O(C^2) covariance is kept. Undecodable images are skipped and logged.
        """
        acc = CovarianceAccumulator(self.meta.channels)
        self.feature_hook = lambda feats, keys, scales: acc.update(self.model.whitening_vectors(feats))
        failed = 0
        try:
            for res in self.iter_extract(ExtractItem(i, s) for i, s in enumerate(sources)):
                if res.error is not None:
                    failed += 1
                    logger.warning("whitening: skipping image %s: %s", res.key, res.error)
        finally:
            self.feature_hook = None
        logger.info("whitening: %d vectors from the images (%d skipped)", acc.count, failed)
        return learn_pca_whitening(acc, dim, power=power)

    def iter_extract_paths(self, paths: Iterable[str | os.PathLike[str]]) -> Iterator[ExtractResult]:
        """Stream results for files; each result's key is its path."""
        return self.iter_extract(ExtractItem(os.fspath(p), p) for p in paths)

    def iter_extract(
        self, items: Iterable[ExtractItem], *, annotator: Annotator | None = None
    ) -> Iterator[ExtractResult]:
        """Stream results (not in input order: each as soon as all its scales are done).

        ``annotator`` (default: the extractor's own) runs in the decode workers on each decoded
        image and adds boxes to pool (see :data:`Annotator`)."""
        annotate = annotator if annotator is not None else self.annotator
        prefetch = max(2 * self.batch_size, 4 * self.workers)
        max_buffered = self.buffer_images
        pending: dict[int, _Pending] = {}
        buckets: dict[tuple[int, int], list[_Job]] = {}
        futures: deque[Future[tuple[_Pending, list[_Job]]]] = deque()
        it = iter(enumerate(items))
        with ThreadPoolExecutor(self.workers, thread_name_prefix="imsearch-decode") as pool:
            exhausted = False
            while True:
                while not exhausted and len(futures) < prefetch:
                    nxt = next(it, None)
                    if nxt is None:
                        exhausted = True
                        break
                    futures.append(pool.submit(self._prepare, nxt[0], nxt[1], annotate))
                if not futures:
                    break
                entry, jobs = futures.popleft().result()
                if entry.result.error is not None:
                    yield entry.result
                    continue
                pending[jobs[0].slot] = entry
                for job in jobs:
                    buckets.setdefault(job.pixels.shape[:2], []).append(job)
                buffered = sum(len(b) for b in buckets.values())
                for shape in [s for s, b in buckets.items() if len(b) >= self.batch_size]:
                    yield from self._run_bucket(buckets, shape, pending)
                    buffered = sum(len(b) for b in buckets.values())
                while buffered > max_buffered:
                    fullest = max(buckets, key=lambda s: len(buckets[s]))
                    yield from self._run_bucket(buckets, fullest, pending)
                    buffered = sum(len(b) for b in buckets.values())
            for shape in list(buckets):
                yield from self._run_bucket(buckets, shape, pending)
        if pending:  # cannot happen unless a bug loses a job: fail loudly rather than drop images
            raise ImsearchError(f"internal error: {len(pending)} images were not completed")

    # ------------------------------------------------------------------ stages
    def _prepare(
        self, slot: int, item: ExtractItem, annotator: Annotator | None = None
    ) -> tuple[_Pending, list[_Job]]:
        """Worker: decode, annotate, resize to every scale (no torch here)."""
        import time

        t0 = time.perf_counter()
        result = ExtractResult(key=item.key)
        try:
            decoded = self._decode(item)
            width0, height0 = decoded.original_size
            result.info = ImageInfo(width0, height0, decoded.format, decoded.mode, decoded.exif_time)
            boxes = [_check_box(b, width0, height0) for b in item.boxes]
            if annotator is not None:
                extra, result.annotation = annotator(decoded)
                boxes.extend(_check_box(b, width0, height0) for b in extra)
        except ImageDecodeError as exc:
            result.error = exc.reason
            return _Pending(result, 0), []
        except ImsearchError as exc:
            result.error = str(exc)
            return _Pending(result, 0), []
        result.boxes = tuple(boxes)
        jobs = []
        image = Image.fromarray(decoded.pixels)
        for index, scale in enumerate(self.meta.scales):
            tw, th = input_size(width0, height0, self.meta.max_side, scale, self.meta.stride)
            resized = image.resize((tw, th), Image.Resampling.BILINEAR) if (tw, th) != image.size else image
            sx, sy = tw / width0, th / height0
            scaled = [(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy) for b in boxes]
            jobs.append(_Job(slot, index, np.asarray(resized), scaled))
        self.stats["decode_s"] += time.perf_counter() - t0
        return _Pending(result, len(jobs)), jobs

    def _decode(self, item: ExtractItem) -> DecodedImage:
        src = item.source
        if isinstance(src, DecodedImage):
            return src
        if isinstance(src, np.ndarray):
            arr = src
            if arr.ndim == 2:
                arr = np.repeat(arr[:, :, None], 3, axis=2)
            if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
                raise ImageDecodeError(str(item.key), f"array must be (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
            h, w = arr.shape[:2]
            return DecodedImage(np.ascontiguousarray(arr), (w, h), "array", "RGB")
        need = math.ceil(self.meta.max_side * max(self.meta.scales))
        return decode_image(src, name=_source_name(src), max_side=need, max_pixels=self.max_pixels)

    def _run_bucket(
        self, buckets: dict[tuple[int, int], list[_Job]], shape: tuple[int, int], pending: dict[int, _Pending]
    ) -> Iterator[ExtractResult]:
        jobs = buckets.pop(shape)
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start : start + self.batch_size]
            descs, regions = self._forward(chunk, [pending[j.slot].result.key for j in chunk])
            for job, desc, reg in zip(chunk, descs, regions, strict=True):
                entry = pending[job.slot]
                self._accumulate(entry, desc, reg)
                if entry.scales_left == 0:
                    del pending[job.slot]
                    yield self._finish(entry)

    def _forward(self, jobs: list[_Job], keys: list[Hashable]) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        import time

        t0 = time.perf_counter()
        batch = torch.from_numpy(np.stack([j.pixels for j in jobs])).permute(0, 3, 1, 2)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode(), self._torch_threads():
            x = self.model.normalize(batch)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            feats = self.run_backbone(x)
            if self.feature_hook is not None:
                self.feature_hook(feats, keys, [j.scale_index for j in jobs])
            descs = self.model.head(feats)
            regions: list[torch.Tensor | None] = [
                self.model.head_boxes(feats[i], j.boxes) if j.boxes else None for i, j in enumerate(jobs)
            ]
        self.stats["forward_s"] += time.perf_counter() - t0
        self.stats["batches"] += 1
        self.stats["images"] += len(jobs)
        return descs, regions

    @contextlib.contextmanager
    def _torch_threads(self) -> Iterator[None]:
        """With onnxruntime, torch's own steps (normalize, head) run on this thread alone: an
        OpenMP team would spin between them and steal a core from onnxruntime's threads (a
        query measured ~1.4x slower with it on 2 cores)."""
        if self.onnx is None:
            yield
            return
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)

    def add_pause_points(self, pause: Callable[[], None]) -> int:
        """Call ``pause()`` before every layer with weights of the network that runs (a
        background job yielding the CPU to searches: see :class:`api.compute.ForegroundGate`);
        returns how many layers got one."""

        def hook(module: torch.nn.Module, args: Any) -> None:
            pause()

        if self.onnx is not None:
            raise ImsearchError("pause points need the torch engine (onnxruntime runs the network as one call)")
        if self.backbone is self.model.backbone:  # never hook the model's own network (searches share it)
            self.backbone = copy.deepcopy(self.backbone)
        layers = [m for m in self.backbone.modules() if not list(m.children()) and any(True for _ in m.parameters())]
        for layer in layers:
            layer.register_forward_pre_hook(hook)
        return len(layers)

    def run_backbone(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 feature maps of a normalized batch, in the extractor's precision and engine."""
        if self.onnx is not None:
            return self.onnx(x)
        if self.backbone_dtype != torch.float32:
            return self.backbone(x.to(self.backbone_dtype)).float()
        with self.autocast():
            return self.backbone(x).float()

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @staticmethod
    def _accumulate(entry: _Pending, desc: torch.Tensor, regions: torch.Tensor | None) -> None:
        entry.desc = desc if entry.desc is None else entry.desc + desc
        if regions is not None:
            entry.regions = regions if entry.regions is None else entry.regions + regions
        entry.scales_left -= 1

    @staticmethod
    def _finish(entry: _Pending) -> ExtractResult:
        res = entry.result
        assert entry.desc is not None  # every finished entry ran at least one scale
        res.descriptor = descriptors_to_numpy(l2n(entry.desc))
        if entry.regions is not None:
            res.regions = descriptors_to_numpy(l2n(entry.regions))
        elif res.boxes:
            res.regions = np.zeros((0, entry.desc.shape[-1]), dtype=np.float32)
        return res


def _check_box(box: Sequence[float], width: int, height: int) -> Box:
    if len(box) != 4:
        raise ImsearchError(f"a box is (x0, y0, x1, y1), got {list(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ImsearchError(f"box {list(box)} has a non-finite coordinate")
    x0, x1 = max(0.0, min(x0, width)), max(0.0, min(x1, width))
    y0, y1 = max(0.0, min(y0, height)), max(0.0, min(y1, height))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ImsearchError(
            f"box {list(box)} is empty inside the {width}x{height} image; give (x0, y0, x1, y1) with x0 < x1, y0 < y1"
        )
    return (x0, y0, x1, y1)


def _source_name(src: object) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return "<bytes>" if isinstance(src, (bytes, bytearray, memoryview)) else type(src).__name__
