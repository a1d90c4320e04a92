"""Numeric building blocks: letterbox, YOLOX decode, NMS, union area (numpy, vectorized).

Each function has a slow, obvious float64 twin in ``tests/retrieval/test_vision.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

YOLOX_STRIDES: tuple[int, ...] = (8, 16, 32)
LETTERBOX_FILL = 114


def letterbox(
    image: np.ndarray, size_hw: tuple[int, int], fill: int = LETTERBOX_FILL
) -> tuple[np.ndarray, float]:
    """Resize ``image`` keeping its aspect ratio to fit ``size_hw``, top-left on a ``fill`` canvas.

    Returns the ``uint8 (H, W, 3)`` canvas and the ratio (model pixels per image pixel).
    """
    height, width = size_hw
    ratio = min(height / image.shape[0], width / image.shape[1])
    new_w = max(1, min(width, int(image.shape[1] * ratio)))
    new_h = max(1, min(height, int(image.shape[0] * ratio)))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    canvas = np.full((height, width, 3), fill, dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    return canvas, ratio


def yolox_grids(
    size_hw: tuple[int, int], strides: Sequence[int] = YOLOX_STRIDES
) -> tuple[np.ndarray, np.ndarray]:
    """Cell offsets ``(A, 2)`` as (x, y) and per-cell strides ``(A, 1)``, x varying fastest per level."""
    grids, cell_strides = [], []
    for stride in strides:
        rows, cols = size_hw[0] // stride, size_hw[1] // stride
        xs, ys = np.meshgrid(np.arange(cols), np.arange(rows))
        grids.append(np.stack((xs, ys), axis=-1).reshape(-1, 2))
        cell_strides.append(np.full((rows * cols, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(cell_strides).astype(np.float32)


def yolox_decode(raw: np.ndarray, grid: np.ndarray, strides: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode raw YOLOX predictions ``(..., A, 5 + C)`` into boxes and scores.

    Returns ``xyxy`` boxes ``(..., A, 4)`` in model-input pixels and class scores
    ``(..., A, C)`` = objectness x class probability (both already sigmoid in the export).
    """
    centers = (raw[..., 0:2] + grid) * strides
    sizes = np.exp(raw[..., 2:4]) * strides
    boxes = np.concatenate((centers - sizes / 2, centers + sizes / 2), axis=-1)
    scores = raw[..., 4:5] * raw[..., 5:]
    return boxes, scores


def box_iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``xyxy`` box against ``(n, 4)`` boxes."""
    ix0 = np.maximum(box[0], boxes[:, 0])
    iy0 = np.maximum(box[1], boxes[:, 1])
    ix1 = np.minimum(box[2], boxes[:, 2])
    iy1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS: indices kept, best score first; drops boxes with IoU > ``iou_threshold``."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[box_iou_one(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.intp)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Per-class NMS in one pass: boxes of different classes are moved apart so they never overlap."""
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.intp)
    span = float(boxes.max() - boxes.min()) + 1.0
    shifted = boxes.astype(np.float64) + (classes.astype(np.float64) * span)[:, None]
    return nms(shifted, scores, iou_threshold)


def union_area(boxes: np.ndarray) -> float:
    """Exact area covered by the union of ``xyxy`` boxes ``(n, 4)`` (coordinate compression)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    if boxes.shape[0] == 0:
        return 0.0
    xs = np.unique(boxes[:, [0, 2]])
    ys = np.unique(boxes[:, [1, 3]])
    covered = np.zeros((ys.size - 1, xs.size - 1), dtype=bool)
    ix = np.searchsorted(xs, boxes[:, [0, 2]])
    iy = np.searchsorted(ys, boxes[:, [1, 3]])
    for (x0, x1), (y0, y1) in zip(ix, iy, strict=True):
        covered[y0:y1, x0:x1] = True
    cell_areas = np.diff(ys)[:, None] * np.diff(xs)[None, :]
    return float(cell_areas[covered].sum())


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exps = np.exp(shifted)
    return exps / exps.sum(axis=axis, keepdims=True)
