"""Detection and segmentation back ends (ONNX, torchvision) -> labels, boxes, areas.

Importing this package loads neither onnxruntime nor torch; back ends are built on
demand through :func:`create_detector` / :func:`create_segmenter`.
"""

from retrieval.vision.classes import COCO_CLASSES, VOC_CLASSES, canonical_label
from retrieval.vision.labels import image_labels
from retrieval.vision.registry import (
    available_detectors,
    available_segmenters,
    create_detector,
    create_segmenter,
)
from retrieval.vision.types import Detection, Detector, ImageLabel, Segmentation, Segmenter

__all__ = [
    "COCO_CLASSES",
    "VOC_CLASSES",
    "Detection",
    "Detector",
    "ImageLabel",
    "Segmentation",
    "Segmenter",
    "available_detectors",
    "available_segmenters",
    "canonical_label",
    "create_detector",
    "create_segmenter",
    "image_labels",
]
