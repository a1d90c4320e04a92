"""Export a collection's model for torch-free queries (imports torch; run once per model).

:func:`export_quick_model` folds BatchNorm into the convolutions, exports the backbone to
ONNX (:func:`retrieval.models.onnx_backbone.export_onnx`), writes the numpy head's parameters,
then describes a few deterministic test images both ways: the export is kept only when every
cosine between the onnxruntime + numpy descriptor and the torch float32 :class:`Extractor`'s is
at least :data:`~retrieval.quick.model.MIN_EXPORT_COSINE`. Files are written under temporary
names and renamed, the head file last, so a crash or a concurrent export never leaves a pair
that :class:`~retrieval.quick.model.QuickModel` would read.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import Extractor
from retrieval.models.fuse import fuse_conv_bn
from retrieval.models.onnx_backbone import export_onnx, onnx_available
from retrieval.quick import QuickUnavailableError
from retrieval.quick.head import POOLINGS
from retrieval.quick.model import (
    ARTIFACT_VERSION,
    MIN_EXPORT_COSINE,
    QuickModel,
    artifact_paths,
    export_failure,
    failure_path,
    read_header,
)

logger = logging.getLogger(__name__)


def check_images(seed: int = 0) -> list[np.ndarray]:
    """Three deterministic RGB test images (smooth structure + texture) of different aspect ratios."""
    rng = np.random.default_rng(seed)
    out = []
    for width, height in ((640, 480), (360, 500), (300, 300)):
        coarse = rng.integers(0, 256, (height // 40 + 1, width // 40 + 1, 3)).astype(np.float64)
        ys = np.linspace(0, coarse.shape[0] - 1, height)
        xs = np.linspace(0, coarse.shape[1] - 1, width)
        y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
        y1, x1 = np.minimum(y0 + 1, coarse.shape[0] - 1), np.minimum(x0 + 1, coarse.shape[1] - 1)
        fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
        smooth = (coarse[y0][:, x0] * (1 - fy) * (1 - fx) + coarse[y1][:, x0] * fy * (1 - fx)
                  + coarse[y0][:, x1] * (1 - fy) * fx + coarse[y1][:, x1] * fy * fx)
        texture = rng.normal(0, 25, (height, width, 3))
        out.append(np.clip(smooth + texture, 0, 255).astype(np.uint8))
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _head_bytes(model: DescriptorModel, onnx_bytes: int, cosine: float) -> bytes:
    import io

    header = {
        "version": ARTIFACT_VERSION,
        "fingerprint": model.fingerprint,
        "model": model.meta.to_dict(),
        "head": model.head_settings(),
        "gem_p": model.gem_p,
        "onnx_bytes": onnx_bytes,
        "export_cosine": cosine,
    }
    arrays: dict[str, np.ndarray] = {"header": np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)}
    if model.whiten is not None:
        arrays["whiten_weight"] = model.whiten.weight.detach().to("cpu", torch.float32).numpy()
        arrays["whiten_bias"] = model.whiten.bias.detach().to("cpu", torch.float32).numpy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def quick_model_ready(root: Path, fingerprint: str) -> bool:
    """Whether the collection at ``root`` holds a readable export of the model ``fingerprint``."""
    onnx_path, head_path = artifact_paths(root, fingerprint)
    if not (onnx_path.is_file() and head_path.is_file()):
        return False
    try:
        meta, _ = read_header(head_path)
    except QuickUnavailableError:
        return False
    return meta.fingerprint == fingerprint and onnx_path.stat().st_size == meta.onnx_bytes


def export_quick_model(root: str | os.PathLike[str], model: DescriptorModel) -> tuple[Path, Path]:
    """Write (or find) ``models/<fp>.onnx`` and ``models/<fp>.head.npz`` of ``model`` in the collection at ``root``.

    Raises :class:`QuickUnavailableError` when the model cannot run this way (pooling without a
    numpy head, no onnxruntime, an export that does not match torch). A model that cannot be
    exported is recorded (:func:`~retrieval.quick.model.failure_path`) and not tried again.
    """
    root = Path(root)
    onnx_path, head_path = artifact_paths(root, model.fingerprint)
    if quick_model_ready(root, model.fingerprint):
        return onnx_path, head_path
    failed = export_failure(root, model.fingerprint)
    if failed is not None:
        raise QuickUnavailableError(f"{failed} (recorded in {failure_path(root, model.fingerprint)})")
    try:
        return _export(root, model, onnx_path, head_path)
    except QuickUnavailableError as exc:
        failure_path(root, model.fingerprint).parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(failure_path(root, model.fingerprint), f"{exc}\n".encode())
        raise


def _export(root: Path, model: DescriptorModel, onnx_path: Path, head_path: Path) -> tuple[Path, Path]:
    if model.meta.pooling not in POOLINGS:
        raise QuickUnavailableError(f"pooling {model.meta.pooling!r} has no numpy head")
    if not model.scales_summed:
        raise QuickUnavailableError(
            f"the model combines its scales by {model.meta.scale_agg!r}, which the torch extractor does not do "
            "yet: there is no torch descriptor to check an export against (nor can the extractor describe "
            "images with this model)"
        )
    if not onnx_available():
        raise QuickUnavailableError("onnxruntime and onnx are needed for fast queries: pip install 'imsearch[onnx]'")
    t0 = time.perf_counter()
    cpu_model = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
    stride = int(model.meta.stride)
    example = torch.rand(1, 3, 4 * stride, 6 * stride)
    backbone = fuse_conv_bn(copy.deepcopy(cpu_model.backbone).eval(), example)
    try:
        data = export_onnx(backbone, example)
    except Exception as exc:  # the exporter raises many kinds (unsupported operators, tracing errors)
        raise QuickUnavailableError(
            f"the backbone could not be exported to ONNX ({type(exc).__name__}: {exc})"
        ) from exc
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(onnx_path, data)
    fd, tmp_name = tempfile.mkstemp(dir=head_path.parent, prefix=f".{head_path.name}.", suffix=".npz")
    os.close(fd)
    tmp_head = Path(tmp_name)
    try:
        tmp_head.write_bytes(_head_bytes(cpu_model, len(data), float("nan")))
        quick = QuickModel(onnx_path, tmp_head)
        images = check_images()
        reference = Extractor(cpu_model, device="cpu", precision="fp32", engine="torch", batch_size=1,
                              workers=1).extract(images)
        ours = np.stack([quick.describe(im) for im in images])
        cosine = float(np.min(np.sum(reference * ours, axis=1)))
        if not cosine >= MIN_EXPORT_COSINE:
            onnx_path.unlink(missing_ok=True)
            raise QuickUnavailableError(
                f"the ONNX export of {model.meta.describe()} does not match torch (cosine {cosine:.6f} < "
                f"{MIN_EXPORT_COSINE}); searches keep using torch. Please report this model"
            )
        _write_atomic(head_path, _head_bytes(cpu_model, len(data), cosine))
    finally:
        tmp_head.unlink(missing_ok=True)
    logger.info("exported the model for fast queries to %s (%.1f MB, cosine %.6f vs torch, %.1f s)",
                onnx_path, len(data) / 1e6, cosine, time.perf_counter() - t0)
    return onnx_path, head_path
