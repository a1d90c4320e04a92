"""The backbone run by onnxruntime: a faster CPU engine for the same float32 network.

The (BatchNorm-folded) backbone is exported to ONNX when the extractor is built (about
a second, through a temporary file) with dynamic batch, height and width, and run
by onnxruntime's CPU kernels in float32. On the 2-core CI machine a search by upload through
``imsearch serve`` (``python -m bench.api``) took 77.5 ms (p50) with it vs 100.6 ms with torch bf16,
98.8 vs 130.8 ms during an index job; ``python -m bench.engines`` compares the engines on real
photos. The feature maps match the torch float32 network to float32 rounding (tested), so the
descriptors are closer to the exact ones than bf16's; an index built with either engine is
searched with the other.

Needs ``onnxruntime`` and ``onnx`` (the exporter): ``pip install 'imsearch[onnx]'``.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retrieval.errors import ImsearchError

logger = logging.getLogger(__name__)

#: ONNX opset of the export (onnxruntime >= 1.17 runs it)
OPSET = 17


def onnx_available() -> bool:
    """True when both onnxruntime and the ONNX exporter's ``onnx`` package import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(backbone: nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX model of ``backbone`` (a float32 module in eval mode; NCHW) with dynamic batch, height and width."""
    with tempfile.TemporaryDirectory(prefix="imsearch-onnx-") as tmp, warnings.catch_warnings(), \
            torch.inference_mode(False), torch.no_grad():
        path = Path(tmp) / "backbone.onnx"
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        torch.onnx.export(
            backbone,
            (example.float().contiguous(),),
            path,
            input_names=["image"],
            output_names=["features"],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                          "features": {0: "batch", 2: "fh", 3: "fw"}},
            opset_version=OPSET,
            dynamo=False,
        )
        return path.read_bytes()


class OnnxBackbone:
    """Callable like the torch backbone: normalized float32 ``(B, 3, H, W)`` -> float32 feature maps.

    ``threads``: onnxruntime intra-op threads (``None``: torch's current thread count, so the
    two engines use the same cores). One call at a time per instance (the extractor's model
    thread); onnxruntime sessions are thread-safe, but a query is fastest alone on the cores.
    """

    def __init__(self, backbone: nn.Module, stride: int, *, threads: int | None = None) -> None:
        if not onnx_available():
            raise ImsearchError(
                "engine 'onnxruntime' needs the onnxruntime and onnx packages: pip install 'imsearch[onnx]' "
                "(or use engine 'torch')"
            )
        import onnxruntime as ort

        t0 = time.perf_counter()
        example = torch.rand(1, 3, 4 * stride, 6 * stride)
        try:
            model_bytes = export_onnx(backbone, example)
        except Exception as exc:  # the exporter raises many kinds (unsupported operators, tracing errors)
            raise ImsearchError(f"the backbone could not be exported to ONNX ({type(exc).__name__}: {exc}); "
                                "use engine 'torch'") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        try:
            self.session: Any = ort.InferenceSession(model_bytes, sess_options=options,
                                                     providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ImsearchError(f"onnxruntime could not load the exported backbone: {exc}; use engine 'torch'") from exc
        self.threads = options.intra_op_num_threads
        self.size_bytes = len(model_bytes)
        logger.info("backbone exported to onnxruntime (%.1f MB, %d threads) in %.1f s",
                    self.size_bytes / 1e6, self.threads, time.perf_counter() - t0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (out,) = self.session.run(["features"], {"image": arr})
        # channels-last, as torch's maps: the R-MAC head's max-pooling is ~6x faster on it
        return torch.from_numpy(out).contiguous(memory_format=torch.channels_last)
