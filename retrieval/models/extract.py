"""Fast batched extraction: sources in, descriptors out, streaming with bounded memory.

Decoding and resizing run in a thread pool (Pillow releases the GIL) while the model
runs batches on its own threads. On CPU the calling thread's torch threads (``torch.get_num_threads()``)
become that many model threads of one torch thread each, every one running whole batches:
an OpenMP team of two threads on a shared 2-core machine stalls at each layer's barrier
whenever the OS gives one of its cores to another thread (a decode worker, the indexer's
reader or writer, another process), while single-threaded model threads only ever slow
themselves (measured under load: 2 threads x 1 ran 1.7-2.0x the images/s of 1 thread x 2
on the same pre-decoded batches; ``python -m bench.extract``). One image at a time
(:meth:`Extractor.extract_one`, a query) still runs on the calling thread with its whole team:
that is the low-latency path. Each image is resized so that its long side is
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
import threading
import time
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
    # per scale index, summed in scale order when the last one is in (whatever order the
    # batches ran in, an image's descriptor is the same sum)
    descs: dict[int, torch.Tensor] = field(default_factory=dict)
    regions: dict[int, torch.Tensor] = field(default_factory=dict)


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
        model_threads: int | None = None,
    ) -> None:
        """``model_threads``: threads running batches in :meth:`iter_extract` (None: on CPU, the
        calling thread's torch thread count, each model thread then running one torch thread; on
        CUDA, 1). With 1 the batches run on the calling thread with its torch threads."""
        if batch_size < 1:
            raise ImsearchError(f"batch_size must be >= 1, got {batch_size}")
        if model_threads is not None and model_threads < 1:
            raise ImsearchError(f"model_threads must be >= 1, got {model_threads}")
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
        self.model_threads = model_threads
        #: seconds of decode / forward work (summed over threads), inputs and batches run, and
        #: the model threads of the latest :meth:`iter_extract`
        self.stats = {"decode_s": 0.0, "forward_s": 0.0, "images": 0, "batches": 0, "model_threads": 1}
        self._stats_lock = threading.Lock()
        #: called with (float32 feature maps, item keys, scale indices) of every batch, one call
        #: at a time (model threads take turns)
        self.feature_hook: FeatureHook | None = None
        self._hook_lock = threading.Lock()
        self._model_pool: ThreadPoolExecutor | None = None
        self._model_pool_layout = (0, 0)
        self._onnx_batch: OnnxBackbone | None = None  # a session of one thread per model thread
        self._pool_lock = threading.Lock()
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
            self._accumulate(entry, job.scale_index, descs[0], regions[0])
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
        image and adds boxes to pool (see :data:`Annotator`). Batches run on the model threads
        (see :meth:`model_layout`), at most one more batch in flight than there are threads."""
        annotate = annotator if annotator is not None else self.annotator
        threads, _ = layout = self.model_layout()
        run = _Runner(self, self._model_runner(layout))
        self.stats["model_threads"] = threads
        prefetch = max(2 * self.batch_size, 4 * self.workers)
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
                yield from run.harvest(block=False)
                entry, jobs = futures.popleft().result()
                if entry.result.error is not None:
                    yield entry.result
                    continue
                run.pending[jobs[0].slot] = entry
                for job in jobs:
                    buckets.setdefault(job.pixels.shape[:2], []).append(job)
                for shape in [s for s, b in buckets.items() if len(b) >= self.batch_size]:
                    yield from run.launch(buckets, shape, self.batch_size, max_running=threads + 1)
                while sum(len(b) for b in buckets.values()) > self.buffer_images:
                    fullest = max(buckets, key=lambda s: len(buckets[s]))
                    yield from run.launch(buckets, fullest, self.batch_size, max_running=threads + 1)
            for shape in sorted(buckets, key=lambda s: -len(buckets[s])):
                yield from run.launch(buckets, shape, self.batch_size, max_running=threads + 1)
            yield from run.harvest(block=True)
        if run.pending:  # cannot happen unless a bug loses a job: fail loudly rather than drop images
            raise ImsearchError(f"internal error: {len(run.pending)} images were not completed")

    def forward_batches(self, batches: Iterable[Sequence[np.ndarray]]) -> Iterator[torch.Tensor]:
        """Per-scale descriptors ``(B, dim)`` of batches of same-size ``(H, W, 3)`` uint8 inputs,
        already decoded and resized, in order, run exactly as :meth:`iter_extract` runs its
        batches (same model threads, same number in flight): the pure model rate of the
        pipeline (the benches' ceiling)."""
        threads, _ = layout = self.model_layout()
        pool = self._model_runner(layout)
        onnx = self._onnx_batch if pool is not None else None
        running: deque[Future[tuple[torch.Tensor, list[torch.Tensor | None]]]] = deque()
        for arrays in batches:
            jobs = [_Job(i, 0, a) for i, a in enumerate(arrays)]
            if pool is None:
                yield self._forward(jobs, list(range(len(jobs))))[0]
                continue
            if len(running) > threads:
                yield running.popleft().result()[0]
            running.append(pool.submit(self._forward, jobs, list(range(len(jobs))), onnx))
        while running:
            yield running.popleft().result()[0]

    def model_layout(self) -> tuple[int, int]:
        """``(model threads, torch threads each)`` of :meth:`iter_extract` called from this thread:
        ``model_threads`` as given, else on CPU one model thread per torch thread of the calling
        thread (an index job that gave its thread one torch thread runs its batches on it, as
        before); on CUDA one model thread."""
        budget = max(1, torch.get_num_threads())
        threads = self.model_threads or (budget if self.device.type == "cpu" else 1)
        return threads, max(1, budget // threads)

    def _model_runner(self, layout: tuple[int, int]) -> ThreadPoolExecutor | None:
        """The model threads for ``layout`` (kept between calls: their oneDNN kernels stay built),
        None when the batches run on the calling thread."""
        threads, per_thread = layout
        if threads == 1:
            return None
        with self._pool_lock:
            if self._model_pool is None or self._model_pool_layout != layout:
                if self._model_pool is not None:
                    self._model_pool.shutdown(wait=False)
                self._model_pool = ThreadPoolExecutor(
                    threads, thread_name_prefix="imsearch-model", initializer=torch.set_num_threads,
                    initargs=(per_thread,),
                )
                self._model_pool_layout = layout
                self._onnx_batch = None
                if self.onnx is not None and self.onnx.threads != per_thread:
                    # one session run by every model thread at once (onnxruntime allows it), each
                    # call on its own thread: no intra-op pool for the model threads to fight over
                    self._onnx_batch = OnnxBackbone(self.backbone, int(self.meta.stride), threads=per_thread)
                logger.info("extractor: %d model threads x %d torch threads", threads, per_thread)
            return self._model_pool

    # ------------------------------------------------------------------ stages
    def _prepare(
        self, slot: int, item: ExtractItem, annotator: Annotator | None = None
    ) -> tuple[_Pending, list[_Job]]:
        """Worker: decode, annotate, resize to every scale (no torch here)."""
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
        with self._stats_lock:
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

    def _forward(
        self, jobs: list[_Job], keys: list[Hashable], onnx: OnnxBackbone | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        t0 = time.perf_counter()
        batch = torch.from_numpy(np.stack([j.pixels for j in jobs])).permute(0, 3, 1, 2)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode(), self._torch_threads():
            x = self.model.normalize(batch)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            feats = self.run_backbone(x, onnx=onnx)
            if self.feature_hook is not None:
                with self._hook_lock:
                    self.feature_hook(feats, keys, [j.scale_index for j in jobs])
            descs = self.model.head(feats)
            regions: list[torch.Tensor | None] = [
                self.model.head_boxes(feats[i], j.boxes) if j.boxes else None for i, j in enumerate(jobs)
            ]
        with self._stats_lock:
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

    def run_backbone(self, x: torch.Tensor, *, onnx: OnnxBackbone | None = None) -> torch.Tensor:
        """Float32 feature maps of a normalized batch, in the extractor's precision and engine
        (``onnx``: this onnxruntime session instead of the extractor's own)."""
        if self.onnx is not None:
            return (onnx or self.onnx)(x)
        if self.backbone_dtype != torch.float32:
            return self.backbone(x.to(self.backbone_dtype)).float()
        with self.autocast():
            return self.backbone(x).float()

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @staticmethod
    def _accumulate(entry: _Pending, scale_index: int, desc: torch.Tensor, regions: torch.Tensor | None) -> None:
        entry.descs[scale_index] = desc
        if regions is not None:
            entry.regions[scale_index] = regions
        entry.scales_left -= 1

    @staticmethod
    def _finish(entry: _Pending) -> ExtractResult:
        res = entry.result
        assert entry.descs  # every finished entry ran at least one scale
        desc = _sum_in_order(entry.descs)
        res.descriptor = descriptors_to_numpy(l2n(desc))
        if entry.regions:
            res.regions = descriptors_to_numpy(l2n(_sum_in_order(entry.regions)))
        elif res.boxes:
            res.regions = np.zeros((0, desc.shape[-1]), dtype=np.float32)
        return res


def _sum_in_order(parts: dict[int, torch.Tensor]) -> torch.Tensor:
    keys = sorted(parts)
    total = parts[keys[0]]
    for k in keys[1:]:
        total = total + parts[k]
    return total


class _Runner:
    """One :meth:`Extractor.iter_extract` call's batches: launched on the model threads (or run at
    once on the calling thread), harvested in launch order, finished images yielded."""

    def __init__(self, extractor: Extractor, pool: ThreadPoolExecutor | None) -> None:
        self.ex = extractor
        self.pool = pool
        self.onnx = extractor._onnx_batch if pool is not None else None
        self.pending: dict[int, _Pending] = {}
        self.running: deque[tuple[list[_Job], Future[tuple[torch.Tensor, list[torch.Tensor | None]]]]] = deque()

    def launch(
        self, buckets: dict[tuple[int, int], list[_Job]], shape: tuple[int, int], batch_size: int, *, max_running: int
    ) -> Iterator[ExtractResult]:
        """Run bucket ``shape`` in batches of ``batch_size``, waiting for the oldest batch while
        ``max_running`` are in flight (bounded memory)."""
        jobs = buckets.pop(shape)
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            keys = [self.pending[j.slot].result.key for j in chunk]
            fut: Future[tuple[torch.Tensor, list[torch.Tensor | None]]]
            if self.pool is None:
                fut = Future()
                fut.set_result(self.ex._forward(chunk, keys))
            else:
                while len(self.running) >= max_running:
                    yield from self._take_oldest()
                fut = self.pool.submit(self.ex._forward, chunk, keys, self.onnx)
            self.running.append((chunk, fut))
            if self.pool is None:
                yield from self._take_oldest()

    def harvest(self, *, block: bool) -> Iterator[ExtractResult]:
        """Finished batches (all of them with ``block``; else those done, in launch order)."""
        while self.running and (block or self.running[0][1].done()):
            yield from self._take_oldest()

    def _take_oldest(self) -> Iterator[ExtractResult]:
        chunk, fut = self.running.popleft()
        descs, regions = fut.result()
        for job, desc, reg in zip(chunk, descs, regions, strict=True):
            entry = self.pending[job.slot]
            Extractor._accumulate(entry, job.scale_index, desc, reg)
            if entry.scales_left == 0:
                del self.pending[job.slot]
                yield Extractor._finish(entry)


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
