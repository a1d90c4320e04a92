"""YOLOX detector on onnxruntime: letterbox -> model -> decode -> per-class NMS.

Works with ``yolox_nano.onnx`` and any YOLOX-family export of the same layout: input
``(B, 3, H, W)`` BGR 0..255, output ``(B, A, 5 + C)`` raw grid predictions for strides
8/16/32 with sigmoid objectness and class probabilities. ``H, W`` come from the model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import ImsearchError, ModelFormatError
from retrieval.vision.classes import COCO_CLASSES, canonical_label
from retrieval.vision.modelfiles import resolve_model_file
from retrieval.vision.onnx_session import OnnxModel
from retrieval.vision.ops import YOLOX_STRIDES, batched_nms, letterbox, yolox_decode, yolox_grids
from retrieval.vision.types import Detection, check_images

#: Candidates kept (best scores) before NMS, per image.
PRE_NMS_TOPK = 2000


def check_thresholds(score_threshold: float, nms_iou: float, max_detections: int) -> None:
    """Raise a clear error for out-of-range detector settings."""
    if not 0.0 <= score_threshold <= 1.0:
        raise ImsearchError(f"score_threshold must be within [0, 1], got {score_threshold}")
    if not 0.0 < nms_iou <= 1.0:
        raise ImsearchError(f"nms_iou must be within (0, 1], got {nms_iou}")
    if max_detections < 1:
        raise ImsearchError(f"max_detections must be >= 1, got {max_detections}")


def postprocess(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    ratio: float,
    image_hw: tuple[int, int],
    score_threshold: float,
    nms_iou: float,
    max_detections: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's decoded ``boxes (A, 4)`` / ``scores (A, C)`` -> kept ``(boxes, scores, classes)``.

    Boxes are mapped back to image pixels (divided by the letterbox ratio) and clipped;
    every (cell, class) pair above the threshold is a candidate for per-class NMS.
    """
    cells, classes = np.nonzero(scores > score_threshold)
    cand_scores = scores[cells, classes]
    if cand_scores.size > PRE_NMS_TOPK:
        top = np.argpartition(-cand_scores, PRE_NMS_TOPK)[:PRE_NMS_TOPK]
        cells, classes, cand_scores = cells[top], classes[top], cand_scores[top]
    cand_boxes = boxes[cells] / ratio
    height, width = image_hw
    cand_boxes[:, [0, 2]] = np.clip(cand_boxes[:, [0, 2]], 0, width)
    cand_boxes[:, [1, 3]] = np.clip(cand_boxes[:, [1, 3]], 0, height)
    keep = batched_nms(cand_boxes, cand_scores, classes, nms_iou)[:max_detections]
    return cand_boxes[keep], cand_scores[keep], classes[keep]


class YoloxDetector:
    """YOLOX ONNX detector (see module doc). ``file`` is a path or a name in the model directory."""

    def __init__(
        self,
        file: str | os.PathLike[str] = "yolox_nano.onnx",
        *,
        model_dir: str | os.PathLike[str] | None = None,
        sha256: str | None = None,
        verify: bool = True,
        class_names: Sequence[str] | None = None,
        score_threshold: float = 0.3,
        nms_iou: float = 0.45,
        max_detections: int = 100,
        device: str = "auto",
        threads: int | None = None,
        batch_size: int = 8,
        name: str | None = None,
    ) -> None:
        check_thresholds(score_threshold, nms_iou, max_detections)
        path, digest = resolve_model_file(file, directory=model_dir, sha256=sha256, verify=verify)
        self.model = OnnxModel(path, device=device, threads=threads, batch_size=batch_size)
        channels, height, width = self.model.static_dims((1, 2, 3), "channels, height and width")
        if channels != 3:
            raise ModelFormatError(
                f"{path}: expected 3 input channels, model input is {self.model.input_shape}"
            )
        self.input_hw = (height, width)
        self.grid, self.strides = yolox_grids(self.input_hw, YOLOX_STRIDES)
        n_classes = self._check_output(path)
        names = list(class_names) if class_names is not None else list(COCO_CLASSES)
        if len(names) != n_classes:
            raise ModelFormatError(
                f"{path}: the model predicts {n_classes} classes but {len(names)} class names were given; "
                "pass class_names= with one name per class"
            )
        self.class_names = [canonical_label(n) for n in names]
        self.name = name or Path(path).stem
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.max_detections = max_detections
        self._path, self._sha256 = path, digest

    def _check_output(self, path: Path) -> int:
        """Number of classes, after checking the output has one row per grid cell."""
        shape = self.model.session.get_outputs()[0].shape
        n_cells = self.grid.shape[0]
        if len(shape) != 3 or (isinstance(shape[1], int) and shape[1] != n_cells) \
                or not isinstance(shape[2], int) or shape[2] <= 5:
            raise ModelFormatError(
                f"{path}: output shape {shape} is not a YOLOX layout (B, {n_cells}, 5 + classes) for "
                f"input {self.input_hw} and strides {YOLOX_STRIDES}"
            )
        return int(shape[2]) - 5

    @property
    def identity(self) -> dict[str, Any]:
        """Back end, file and thresholds, for the catalog's models table."""
        return {
            "backend": "onnxruntime", "kind": "yolox", "name": self.name, "file": self._path.name,
            "sha256": self._sha256, "input_size": list(self.input_hw), "classes": len(self.class_names),
            "score_threshold": self.score_threshold, "nms_iou": self.nms_iou,
            "max_detections": self.max_detections,
        }  # fmt: skip

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[float]]:
        """Letterboxed BGR float32 ``(N, 3, H, W)`` batch and the ratio of each image."""
        batch = np.empty((len(images), 3, *self.input_hw), dtype=np.float32)
        ratios = []
        for i, image in enumerate(images):
            canvas, ratio = letterbox(image, self.input_hw)
            batch[i] = canvas[:, :, ::-1].transpose(2, 0, 1)
            ratios.append(ratio)
        return batch, ratios

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Detections per image (best first), boxes in the image's pixels."""
        check_images(images)
        if not images:
            return []
        batch, ratios = self.preprocess(images)
        raw = self.model.run(batch)
        if raw.shape[1] != self.grid.shape[0]:
            raise ModelFormatError(f"model returned {raw.shape[1]} cells, expected {self.grid.shape[0]}")
        boxes, scores = yolox_decode(raw, self.grid, self.strides)
        results = []
        for i, image in enumerate(images):
            kept_boxes, kept_scores, kept_classes = postprocess(
                boxes[i], scores[i], ratio=ratios[i], image_hw=image.shape[:2],
                score_threshold=self.score_threshold, nms_iou=self.nms_iou,
                max_detections=self.max_detections,
            )  # fmt: skip
            results.append([
                Detection((float(b[0]), float(b[1]), float(b[2]), float(b[3])), self.class_names[c], float(s))
                for b, s, c in zip(kept_boxes, kept_scores, kept_classes, strict=True)
            ])
        return results
