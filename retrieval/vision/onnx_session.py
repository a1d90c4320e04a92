"""onnxruntime sessions: provider choice, thread count, and running fixed or dynamic batches."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import ImsearchError, ModelFormatError

logger = logging.getLogger(__name__)


class OnnxModel:
    """One ONNX model with a single image input and a single output used.

    ``device`` is ``"auto"`` (CUDA when onnxruntime offers it, else CPU), ``"cpu"`` or
    ``"cuda"``; ``threads`` sets intra-op threads (``None``: onnxruntime's default).
    """

    def __init__(self, path: Path, *, device: str = "auto", threads: int | None = None,
                 batch_size: int = 8) -> None:
        import onnxruntime as ort

        if batch_size < 1:
            raise ImsearchError(f"batch_size must be >= 1, got {batch_size}")
        available = ort.get_available_providers()
        cuda = "CUDAExecutionProvider" in available
        if device == "cuda" and not cuda:
            raise ImsearchError(
                f"device='cuda' asked but onnxruntime offers only {available}; install onnxruntime-gpu "
                "or use device='cpu'"
            )
        if device not in ("auto", "cpu", "cuda"):
            raise ImsearchError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        providers = ["CPUExecutionProvider"]
        if cuda and device != "cpu":
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelFormatError(f"onnxruntime could not load {path}: {exc}") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ModelFormatError(f"{path}: expected one input, found {[i.name for i in inputs]}")
        self.input_name: str = inputs[0].name
        self.input_shape: list[Any] = list(inputs[0].shape)
        self.output_name: str = outputs[0].name
        self.batch_size = int(self.input_shape[0]) if self.fixed_batch else batch_size
        self.providers: list[str] = list(self.session.get_providers())
        logger.info("loaded %s with %s (input %s %s)", path.name, self.providers, self.input_name,
                    self.input_shape)

    @property
    def fixed_batch(self) -> bool:
        """True when the model's batch dimension is fixed (to 1, in practice)."""
        return isinstance(self.input_shape[0], int)

    def static_dims(self, axes: Sequence[int], what: str) -> tuple[int, ...]:
        """The input dimensions at ``axes``, which must be fixed numbers in the model."""
        dims = [self.input_shape[a] for a in axes]
        if not all(isinstance(d, int) and d > 0 for d in dims):
            raise ModelFormatError(
                f"model input {self.input_name} has shape {self.input_shape}: its {what} must be fixed"
            )
        return tuple(int(d) for d in dims)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run ``batch`` (first axis = images) in chunks the model accepts; outputs concatenated.

        A fixed batch dimension (1 in practice) is met by looping, padding the last chunk.
        """
        outs = []
        for start in range(0, batch.shape[0], self.batch_size):
            chunk = np.ascontiguousarray(batch[start:start + self.batch_size], dtype=np.float32)
            n = chunk.shape[0]
            if self.fixed_batch and n < self.batch_size:
                pad = np.zeros((self.batch_size - n, *chunk.shape[1:]), dtype=np.float32)
                chunk = np.concatenate((chunk, pad))
            outs.append(self.session.run([self.output_name], {self.input_name: chunk})[0][:n])
        return np.concatenate(outs, axis=0)
