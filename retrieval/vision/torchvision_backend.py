"""torchvision detectors (COCO Faster R-CNN) and segmenters (VOC DeepLabV3, LR-ASPP).

Labels are reported in the COCO vocabulary of :mod:`retrieval.vision.classes`; the
"N/A" holes of torchvision's 91-entry COCO list never appear as labels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from retrieval.errors import ImsearchError, UnknownNameError
from retrieval.vision.classes import BACKGROUND, canonical_labels
from retrieval.vision.tv_weights import (
    TV_DETECTORS,
    TV_SEGMENTERS,
    load_torchvision_model,
    resolve_device,
)
from retrieval.vision.types import Detection, Segmentation, check_images, segmentation_from_probs
from retrieval.vision.yolox import check_thresholds

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> float (3, H, W) in [0, 1] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float().div_(255.0)


class TorchvisionDetector:
    """A torchvision Faster R-CNN; ``min_size``/``max_size`` override its input resizing."""

    def __init__(
        self,
        arch: str,
        *,
        weights: str = "DEFAULT",
        weights_path: str | os.PathLike[str] | None = None,
        score_threshold: float = 0.3,
        nms_iou: float = 0.5,
        max_detections: int = 100,
        device: str | torch.device = "auto",
        batch_size: int = 4,
        min_size: int | None = None,
        max_size: int | None = None,
    ) -> None:
        if arch not in TV_DETECTORS:
            raise UnknownNameError("torchvision detector", arch, list(TV_DETECTORS))
        check_thresholds(score_threshold, nms_iou, max_detections)
        if batch_size < 1:
            raise ImsearchError(f"batch_size must be >= 1, got {batch_size}")
        loaded = load_torchvision_model(arch, weights=weights, weights_path=weights_path)
        self.device = resolve_device(device)
        model: Any = loaded.module.to(self.device)
        model.roi_heads.score_thresh = score_threshold
        model.roi_heads.nms_thresh = nms_iou
        model.roi_heads.detections_per_img = max_detections
        if min_size is not None:
            model.transform.min_size = (min_size,)
        if max_size is not None:
            model.transform.max_size = max_size
        self.model = model
        self._labels = canonical_labels(loaded.categories)
        self.class_names = [n for n in self._labels if n is not None]
        self.name = f"tv:{arch}"
        self.batch_size = batch_size
        self._identity: dict[str, Any] = {
            "backend": "torchvision", "arch": arch, "name": self.name, "weights": loaded.weights,
            "sha256": loaded.sha256, "score_threshold": score_threshold, "nms_iou": nms_iou,
            "max_detections": max_detections, "min_size": model.transform.min_size[0],
            "max_size": model.transform.max_size, "classes": len(self.class_names),
        }  # fmt: skip

    @property
    def identity(self) -> dict[str, Any]:
        """Back end, weights and thresholds, for the catalog's models table."""
        return dict(self._identity)

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Detections per image (best first), boxes in the image's pixels."""
        check_images(images)
        results: list[list[Detection]] = []
        for start in range(0, len(images), self.batch_size):
            tensors = [_to_tensor(im, self.device) for im in images[start:start + self.batch_size]]
            with torch.inference_mode():
                outputs = self.model(tensors)
            for image, out in zip(images[start:start + self.batch_size], outputs, strict=True):
                results.append(self._detections(out, image.shape[:2]))
        return results

    def _detections(self, out: dict[str, torch.Tensor], image_hw: tuple[int, ...]) -> list[Detection]:
        boxes = out["boxes"].float().cpu().numpy()
        scores = out["scores"].float().cpu().numpy()
        labels = out["labels"].cpu().numpy()
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, image_hw[1])
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, image_hw[0])
        found = []
        for box, score, idx in zip(boxes, scores, labels, strict=True):
            name = self._labels[int(idx)] if 0 <= int(idx) < len(self._labels) else None
            if name is not None:
                found.append(Detection((float(box[0]), float(box[1]), float(box[2]), float(box[3])), name,
                                       float(score)))
        found.sort(key=lambda d: -d.score)
        return found


class TorchvisionSegmenter:
    """A torchvision VOC segmenter; images are resized so their shorter side is ``resize``."""

    def __init__(
        self,
        arch: str,
        *,
        weights: str = "DEFAULT",
        weights_path: str | os.PathLike[str] | None = None,
        device: str | torch.device = "auto",
        resize: int = 520,
    ) -> None:
        if arch not in TV_SEGMENTERS:
            raise UnknownNameError("torchvision segmenter", arch, list(TV_SEGMENTERS))
        if resize < 16:
            raise ImsearchError(f"resize must be >= 16 pixels, got {resize}")
        loaded = load_torchvision_model(arch, weights=weights, weights_path=weights_path)
        self.device = resolve_device(device)
        self.model = loaded.module.to(self.device)
        canonical = canonical_labels(loaded.categories)
        self.label_names = (BACKGROUND, *(n or f"class_{i}" for i, n in enumerate(canonical) if i > 0))
        self.class_names = list(self.label_names[1:])
        self.name = f"tv:{arch}"
        self.resize = resize
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(3, 1, 1)
        self._identity: dict[str, Any] = {
            "backend": "torchvision", "arch": arch, "name": self.name, "weights": loaded.weights,
            "sha256": loaded.sha256, "resize": resize, "classes": len(self.class_names),
        }  # fmt: skip

    @property
    def identity(self) -> dict[str, Any]:
        """Back end, weights and input size, for the catalog's models table."""
        return dict(self._identity)

    def _prepare(self, image: np.ndarray) -> torch.Tensor:
        height, width = image.shape[:2]
        scale = self.resize / min(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        x = F.interpolate(_to_tensor(image, self.device)[None], size=size, mode="bilinear",
                          align_corners=False, antialias=True)[0]
        return (x - self._mean) / self._std

    def segment(self, images: Sequence[np.ndarray]) -> list[Segmentation]:
        """One segmentation per image (label map at the resized resolution)."""
        check_images(images)
        results = []
        for image in images:  # sizes differ per image, so no stacking
            with torch.inference_mode():
                logits = self.model(self._prepare(image)[None])["out"][0]
                probs = logits.float().softmax(dim=0).permute(1, 2, 0).cpu().numpy()
            results.append(segmentation_from_probs(probs, self.label_names))
        return results
