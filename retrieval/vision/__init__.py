"""Detection and segmentation back ends (ONNX, torchvision) -> labels, boxes, areas.

Importing this package loads neither onnxruntime nor torch; back ends are built on
demand through :func:`create_detector` / :func:`create_segmenter`.
"""

from retrieval.imageio import DecodedImage
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
    "annotate",
    "available_detectors",
    "available_segmenters",
    "canonical_label",
    "create_detector",
    "create_segmenter",
    "image_labels",
]


def annotate(
    decoded: DecodedImage, detector: Detector | None, segmenter: Segmenter | None
) -> tuple[list[Detection], Segmentation | None]:
    """Detect and segment one decoded image; boxes in the coordinates of the ORIGINAL image.

    The models see ``decoded.pixels`` (possibly downscaled at decode time); their boxes are
    scaled back by ``original_size / size``.
    """
    sx = decoded.original_size[0] / decoded.size[0]
    sy = decoded.original_size[1] / decoded.size[1]
    detections = []
    if detector is not None:
        for d in detector.detect([decoded.pixels])[0]:
            x0, y0, x1, y1 = d.box
            detections.append(Detection((x0 * sx, y0 * sy, x1 * sx, y1 * sy), d.label, d.score))
    segmentation = segmenter.segment([decoded.pixels])[0] if segmenter is not None else None
    return detections, segmentation
