"""DeepLabV3 (TF-Hub export, Pascal VOC) segmenter on onnxruntime.

Input ``(B, H, W, 3)`` NHWC RGB scaled ``x / 127.5 - 1`` (image stretched to ``H x W``);
output ``(B, H, W, C)`` logits, argmax over the last axis. VOC names are reported in the
COCO vocabulary (``aeroplane`` -> ``airplane``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from retrieval.errors import ModelFormatError
from retrieval.vision.classes import BACKGROUND, VOC_CLASSES, canonical_labels
from retrieval.vision.modelfiles import resolve_model_file
from retrieval.vision.onnx_session import OnnxModel
from retrieval.vision.ops import softmax
from retrieval.vision.types import Segmentation, check_images, segmentation_from_probs


class DeeplabSegmenter:
    """DeepLabV3 ONNX segmenter. ``class_names`` (given) include the background at index 0."""

    def __init__(
        self,
        file: str | os.PathLike[str] = "deeplabv3_mobilenetv2_voc.onnx",
        *,
        model_dir: str | os.PathLike[str] | None = None,
        sha256: str | None = None,
        verify: bool = True,
        class_names: Sequence[str] | None = None,
        device: str = "auto",
        threads: int | None = None,
        batch_size: int = 8,
        name: str | None = None,
    ) -> None:
        path, digest = resolve_model_file(file, directory=model_dir, sha256=sha256, verify=verify)
        self.model = OnnxModel(path, device=device, threads=threads, batch_size=batch_size)
        height, width, channels = self.model.static_dims((1, 2, 3), "height, width and channels")
        if channels != 3:
            raise ModelFormatError(
                f"{path}: expected an NHWC input with 3 channels, got {self.model.input_shape}"
            )
        self.input_hw = (height, width)
        out_shape = self.model.session.get_outputs()[0].shape
        names = list(class_names) if class_names is not None else list(VOC_CLASSES)
        if len(out_shape) != 4 or out_shape[-1] != len(names):
            raise ModelFormatError(
                f"{path}: output shape {out_shape} does not end in {len(names)} classes; "
                "pass class_names= with one name per output channel (background first)"
            )
        canonical = canonical_labels(names)
        self.label_names = (BACKGROUND, *(n or f"class_{i}" for i, n in enumerate(canonical) if i > 0))
        self.class_names = list(self.label_names[1:])
        self.name = name or Path(path).stem
        self._path, self._sha256 = path, digest

    @property
    def identity(self) -> dict[str, Any]:
        """Back end, file and input size, for the catalog's models table."""
        return {
            "backend": "onnxruntime", "kind": "deeplabv3", "name": self.name, "file": self._path.name,
            "sha256": self._sha256, "input_size": list(self.input_hw), "classes": len(self.class_names),
        }  # fmt: skip

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Stretched, scaled NHWC float32 batch."""
        height, width = self.input_hw
        batch = np.empty((len(images), height, width, 3), dtype=np.float32)
        for i, image in enumerate(images):
            resized = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
            batch[i] = np.asarray(resized, dtype=np.float32) / 127.5 - 1.0
        return batch

    def segment(self, images: Sequence[np.ndarray]) -> list[Segmentation]:
        """One segmentation per image (label map at the model's resolution)."""
        check_images(images)
        if not images:
            return []
        logits = self.model.run(self.preprocess(images))
        return [segmentation_from_probs(softmax(x), self.label_names) for x in logits]
