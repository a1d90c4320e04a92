"""Per-image label summaries (the catalog's ``labels`` rows) from detections and segmentation."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from retrieval.errors import ImsearchError
from retrieval.vision.ops import union_area
from retrieval.vision.types import Detection, ImageLabel, Segmentation


def image_labels(
    detections: Sequence[Detection],
    segmentation: Segmentation | None,
    *,
    image_size: tuple[int, int],
) -> list[ImageLabel]:
    """Summarize one image's labels, one row per (label, source).

    ``image_size`` is ``(width, height)`` in pixels (PIL's ``Image.size`` order), the
    frame the detection boxes are in. Detector rows: best score, number of boxes, and
    the area of the *union* of that label's boxes over the image area. Segmenter rows:
    mean pixel confidence as the score, pixel fraction as the area, count 1.
    Rows come sorted by source, then label.
    """
    width, height = image_size
    if width <= 0 or height <= 0:
        raise ImsearchError(f"image_size must be positive (width, height), got {image_size}")
    by_label: dict[str, list[Detection]] = defaultdict(list)
    for det in detections:
        by_label[det.label].append(det)
    rows = []
    for label in sorted(by_label):
        dets = by_label[label]
        boxes = np.array([d.box for d in dets], dtype=np.float64)
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
        area = min(1.0, union_area(boxes) / (width * height))
        rows.append(ImageLabel(label, "detector", max(d.score for d in dets), area, len(dets)))
    if segmentation is not None:
        for label in sorted(segmentation.class_fractions):
            fraction = segmentation.class_fractions[label]
            score = segmentation.class_scores.get(label, 1.0)
            rows.append(ImageLabel(label, "segmenter", score, fraction, 1))
    return rows
