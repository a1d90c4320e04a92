"""A collection's descriptor model without torch: onnxruntime backbone + numpy head.

Artifacts, next to the collection's ``models/<fp>.pt`` (``fp``: the first 16 hex digits of
the model's fingerprint)::

    models/<fp>.onnx       the BatchNorm-folded backbone, dynamic batch/height/width, float32 NCHW
    models/<fp>.head.npz   whitening, and a JSON header: fingerprint, ModelMeta, every head setting
                           resolved (pooling, GeM p, ReLU+, regional GeM, scale aggregation; version 2),
                           the ONNX file's size, the cosine measured against torch at export

:func:`retrieval.quick.export.export_quick_model` writes them (the ``.npz`` last: it is the
commit record); :class:`QuickModel` reads them. The image side is
:class:`retrieval.models.extract.Extractor`'s, step for step: decode (EXIF-rotated, JPEG
draft at the largest scale), resize each scale bilinearly to :func:`input_size`, scale to
[0, 1], normalize by the model's mean/std.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.imageio import ImageSource, decode_image
from retrieval.models.pooling_defaults import EPS, GEM_P, RGEM_PR, RGEM_SIZE, RMAC_LEVELS, RMAC_OVERLAP
from retrieval.quick import QuickUnavailableError
from retrieval.quick.head import NumpyHead

logger = logging.getLogger(__name__)

#: the head file version written; version 1 files (no resolved head settings) are still read
ARTIFACT_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: a cosine below this between the exported path and torch refuses the export
MIN_EXPORT_COSINE = 0.9999


def artifact_paths(root: Path, fingerprint: str) -> tuple[Path, Path]:
    """``(onnx, head)`` paths of a model's quick artifacts in a collection (beside ``models/<fp>.pt``)."""
    stem = root / "models" / fingerprint[:16]
    return stem.with_suffix(".onnx"), stem.with_suffix(".head.npz")


def failure_path(root: Path, fingerprint: str) -> Path:
    """Where a failed export leaves its reason (``models/<fp>.quick-failed``), so that searches do not
    retry it every time; delete the file to try again (e.g. after upgrading onnxruntime)."""
    return root / "models" / f"{fingerprint[:16]}.quick-failed"


def export_failure(root: Path, fingerprint: str) -> str | None:
    """The reason a previous export of the model failed, if one did."""
    path = failure_path(root, fingerprint)
    try:
        return path.read_text(encoding="utf-8").strip() or "unknown reason"
    except FileNotFoundError:
        return None


def input_size(width: int, height: int, max_side: int, scale: float, stride: int) -> tuple[int, int]:
    """Network input ``(width, height)``: :func:`retrieval.models.extract.input_size` (tested equal)."""
    target = max_side * scale
    ratio = target / max(width, height)

    def snap(v: float) -> int:
        return max(stride, round(v / stride) * stride)

    return snap(width * ratio), snap(height * ratio)


@dataclass(frozen=True)
class QuickMeta:
    """What the artifacts say about the model they belong to."""

    fingerprint: str
    model: dict[str, Any]  # ModelMeta.to_dict()
    onnx_bytes: int
    export_cosine: float

    @property
    def scales(self) -> tuple[float, ...]:
        return tuple(float(s) for s in self.model["scales"])


def read_header(head_path: Path) -> tuple[QuickMeta, NumpyHead]:
    """The header and the numpy head stored in ``<fp>.head.npz``."""
    try:
        with np.load(head_path, allow_pickle=False) as npz:
            header = json.loads(bytes(npz["header"]).decode("utf-8"))
            weight = npz["whiten_weight"] if "whiten_weight" in npz.files else None
            bias = npz["whiten_bias"] if "whiten_bias" in npz.files else None
    except (OSError, ValueError, KeyError) as exc:
        raise QuickUnavailableError(f"{head_path} is unreadable ({exc})") from exc
    if header.get("version") not in READABLE_VERSIONS:
        raise QuickUnavailableError(
            f"{head_path} has version {header.get('version')!r}, this imsearch reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    model = header["model"]
    white = {
        "whiten_weight": None if weight is None else weight.astype(np.float64),
        "whiten_bias": None if bias is None else bias.astype(np.float64),
    }
    try:
        head = _head_v1(header, white) if header["version"] == 1 else head_from_settings(header["head"], **white)
    except (KeyError, TypeError, ValueError) as exc:
        raise QuickUnavailableError(f"{head_path} has invalid head settings ({exc})") from exc
    meta = QuickMeta(header["fingerprint"], model, int(header["onnx_bytes"]), float(header["export_cosine"]))
    return meta, head


def _head_v1(header: dict[str, Any], white: dict[str, Any]) -> NumpyHead:
    """A version 1 header: the pooling settings from the model's metadata (before ReLU+, regional
    GeM and Scale-GeM existed, so none of them is on)."""
    model = header["model"]
    params = model.get("pooling_params", {})
    return NumpyHead(
        pooling=model["pooling"],
        levels=int(params.get("levels", RMAC_LEVELS)),
        overlap=float(params.get("overlap", RMAC_OVERLAP)),
        gem_p=float(header.get("gem_p") or GEM_P),
        gem_eps=float(params.get("eps", EPS)),
        **white,
    )


def head_from_settings(
    settings: dict[str, Any], *, whiten_weight: np.ndarray | None = None, whiten_bias: np.ndarray | None = None
) -> NumpyHead:
    """The numpy head of ``DescriptorModel.head_settings()`` (what a version 2 header holds), whitening
    given as float64 arrays."""
    relu_eps = settings.get("relu_eps")
    return NumpyHead(
        pooling=str(settings["pooling"]),
        levels=int(settings.get("levels", RMAC_LEVELS)),
        overlap=float(settings.get("overlap", RMAC_OVERLAP)),
        gem_p=float(settings.get("p", GEM_P)),
        gem_eps=float(settings["eps"]),
        relu_eps=None if relu_eps is None else float(relu_eps),
        rgem_pr=float(settings.get("pr", RGEM_PR)),
        rgem_size=int(settings.get("size", RGEM_SIZE)),
        scale_agg=str(settings["scale_agg"]),
        scale_p=float(settings["scale_p"]),
        whiten_weight=whiten_weight,
        whiten_bias=whiten_bias,
    )


class QuickModel:
    """Describe images like the collection's :class:`DescriptorModel` does, on onnxruntime + numpy."""

    def __init__(self, onnx_path: Path, head_path: Path, *, threads: int | None = None) -> None:
        if not head_path.is_file() or not onnx_path.is_file():
            raise QuickUnavailableError(f"no exported model at {onnx_path} (it is written after a search with torch)")
        self.meta, self.head = read_header(head_path)
        if onnx_path.stat().st_size != self.meta.onnx_bytes:
            raise QuickUnavailableError(f"{onnx_path} is not the file its header describes (size differs)")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise QuickUnavailableError("onnxruntime is not installed (pip install 'imsearch[onnx]')") from exc
        t0 = time.perf_counter()
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session: Any = ort.InferenceSession(str(onnx_path), sess_options=options,
                                                     providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise QuickUnavailableError(f"onnxruntime cannot load {onnx_path}: {exc}") from exc
        m = self.meta.model
        self.max_side, self.stride = int(m["max_side"]), int(m["stride"])
        self.mean = np.asarray(m["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(m["std"], dtype=np.float32).reshape(1, 3, 1, 1)
        logger.debug("quick model %s loaded in %.0f ms", onnx_path.name, (time.perf_counter() - t0) * 1e3)

    @property
    def fingerprint(self) -> str:
        return self.meta.fingerprint

    def inputs(self, source: ImageSource | np.ndarray) -> list[np.ndarray]:
        """The normalized float32 ``(1, 3, h, w)`` network input of every scale."""
        from PIL import Image

        if isinstance(source, np.ndarray):
            pixels = source
            height0, width0 = pixels.shape[:2]
        else:
            need = math.ceil(self.max_side * max(self.meta.scales))
            name = str(source) if isinstance(source, (str, os.PathLike)) else "query image"
            decoded = decode_image(source, name=name, max_side=need)
            pixels, (width0, height0) = decoded.pixels, decoded.original_size
        image = Image.fromarray(pixels)
        out = []
        for scale in self.meta.scales:
            tw, th = input_size(width0, height0, self.max_side, scale, self.stride)
            resized = image.resize((tw, th), Image.Resampling.BILINEAR) if (tw, th) != image.size else image
            x = np.asarray(resized)[None].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
            out.append(np.ascontiguousarray((x - self.mean) / self.std))
        return out

    def features(self, x: np.ndarray) -> np.ndarray:
        """The backbone's float32 feature maps ``(B, C, h, w)`` of a normalized batch."""
        (maps,) = self.session.run(["features"], {"image": x})
        return np.asarray(maps)

    def describe(self, source: ImageSource | np.ndarray) -> np.ndarray:
        """The ``(dim,)`` float32 L2-normalized descriptor of one image (path, bytes, or RGB array)."""
        return self.head.multi_scale([self.features(x)[0] for x in self.inputs(source)])
