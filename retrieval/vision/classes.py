"""Label vocabularies: the 80 COCO names every back end reports labels in.

Detectors (YOLOX, torchvision Faster R-CNN) are trained on COCO; the segmenters on
Pascal VOC, whose 20 classes are all COCO classes under other spellings. Every label
leaving :mod:`retrieval.vision` is a lowercase COCO name, so a filter on "dog" or
"dining table" means the same thing whichever model wrote the label.
"""

from __future__ import annotations

from collections.abc import Sequence

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

#: Pascal VOC 2012 classes in model-output order (index 0 is the background).
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

#: VOC spellings that differ from the COCO name of the same class.
VOC_TO_COCO: dict[str, str] = {
    "aeroplane": "airplane",
    "diningtable": "dining table",
    "motorbike": "motorcycle",
    "pottedplant": "potted plant",
    "sofa": "couch",
    "tvmonitor": "tv",
}

BACKGROUND = "background"
#: Names that mark "no class" in model class lists (torchvision's COCO list has "N/A" holes).
NON_CLASSES: frozenset[str] = frozenset({"background", "__background__", "n/a"})


def canonical_label(name: str) -> str:
    """Lowercase COCO spelling of a class name (VOC spellings mapped, whitespace trimmed)."""
    key = name.strip().lower()
    return VOC_TO_COCO.get(key, key)


def canonical_labels(names: Sequence[str]) -> list[str | None]:
    """Canonical name per model class index; ``None`` for background and "N/A" placeholders."""
    return [None if n.strip().lower() in NON_CLASSES else canonical_label(n) for n in names]
