"""Data types and protocols shared by every detection and segmentation back end.

Images given to a back end are RGB ``uint8`` arrays of shape ``(H, W, 3)``, already
EXIF-rotated by the decode stage. Boxes come back in the pixels of that array.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from retrieval.errors import ImsearchError

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """One detected object: ``box`` is ``(x0, y0, x1, y1)`` in original-image pixels."""

    box: Box
    label: str
    score: float


@dataclass(frozen=True)
class Segmentation:
    """Per-pixel classes of one image.

    ``label_map`` is ``uint8 (h, w)`` at the model's resolution; value ``v`` names the
    class ``label_names[v]`` (``label_names[0]`` is ``"background"``). ``class_fractions``
    gives, per class present, the fraction of the image's pixels it covers (background
    excluded, only classes > 0); ``class_scores`` the mean softmax probability of that
    class over its pixels (a confidence in [0, 1]).
    """

    class_fractions: dict[str, float]
    class_scores: dict[str, float]
    label_map: np.ndarray = field(repr=False)
    label_names: tuple[str, ...] = field(repr=False)


@dataclass(frozen=True)
class ImageLabel:
    """Summary of one label on one image, as stored in the catalog's ``labels`` table."""

    label: str
    source: Literal["detector", "segmenter"]
    max_score: float
    area_fraction: float
    count: int


@runtime_checkable
class Detector(Protocol):
    """Finds boxed objects; ``class_names`` is the vocabulary its labels come from."""

    name: str
    class_names: list[str]

    @property
    def identity(self) -> dict[str, Any]:
        """Back end, weights (file sha256 or torchvision weights name) and thresholds."""
        ...

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Detections per image, best score first."""
        ...


@runtime_checkable
class Segmenter(Protocol):
    """Labels every pixel; ``class_names`` is the vocabulary (background excluded)."""

    name: str
    class_names: list[str]

    @property
    def identity(self) -> dict[str, Any]:
        """Back end, weights (file sha256 or torchvision weights name) and settings."""
        ...

    def segment(self, images: Sequence[np.ndarray]) -> list[Segmentation]:
        """One segmentation per image."""
        ...


def check_images(images: Sequence[np.ndarray]) -> None:
    """Raise a clear error unless every image is an RGB ``uint8 (H, W, 3)`` array."""
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
                or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
            shape = getattr(image, "shape", None)
            dtype = getattr(image, "dtype", type(image).__name__)
            raise ImsearchError(
                f"image {i}: expected an RGB uint8 array of shape (H, W, 3), got shape {shape} "
                f"dtype {dtype}; convert it first (e.g. PIL Image.convert('RGB') then np.asarray)"
            )


def segmentation_from_probs(probs: np.ndarray, label_names: Sequence[str]) -> Segmentation:
    """Build a :class:`Segmentation` from class probabilities ``(h, w, C)`` (index 0 background)."""
    n_classes = probs.shape[-1]
    if n_classes != len(label_names) or n_classes > 256:
        raise ImsearchError(f"{n_classes} probability channels but {len(label_names)} label names")
    label_map = np.argmax(probs, axis=-1).astype(np.uint8)
    conf = np.take_along_axis(probs, label_map[..., None].astype(np.intp), axis=-1)[..., 0]
    flat = label_map.ravel()
    counts = np.bincount(flat, minlength=n_classes)
    conf_sums = np.bincount(flat, weights=conf.ravel().astype(np.float64), minlength=n_classes)
    fractions: dict[str, float] = {}
    scores: dict[str, float] = {}
    for idx in np.flatnonzero(counts):
        if idx == 0:
            continue
        name = label_names[int(idx)]
        fractions[name] = float(counts[idx]) / flat.size
        scores[name] = float(conf_sums[idx] / counts[idx])
    return Segmentation(fractions, scores, label_map, tuple(label_names))
