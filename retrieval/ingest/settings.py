"""The one settings object of ingestion: what the map step needs to describe an image.

Every front door (``imsearch index``, ``imsearch reindex``, the API's uploads and index jobs,
the Ray runner) builds an :class:`IngestSettings` and hands it to
:class:`~retrieval.ingest.describe.Describer`; each default below is written once, here.
It is a frozen, picklable dataclass of plain values, so Ray can ship it to its workers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from retrieval.errors import ImsearchError
from retrieval.imageio import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

DEFAULT_DETECTOR = "yolox_nano"
DEFAULT_SEGMENTER = "deeplabv3_mobilenetv2_voc"
DEFAULT_REGION_MIN_SCORE = 0.5
DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class IngestSettings:
    """Model, annotators and thresholds of the map step.

    ``model``: path of a saved :class:`~retrieval.models.descriptor.DescriptorModel` file (what
    travels to Ray workers), or None when the caller hands the model object to the Describer.
    ``detect`` / ``segment``: run the detector / segmenter (labels, boxes, region descriptors).
    ``region_min_score``: detections at least this sure get a region descriptor.
    ``max_bytes`` / ``max_pixels``: files and images over these are refused (per-file error).
    ``follow_symlinks``: read files through symbolic links (default: a link is refused).
    ``roots``: files must resolve inside these folders when read (a server's allowed roots);
    None: anywhere (the command line reads what its operator points it at).
    ``device``, ``precision``, ``engine``, ``batch_size``, ``workers`` (decode threads),
    ``buffer_images``: how the network runs (see :class:`~retrieval.models.extract.Extractor`).
    """

    model: str | None = None
    detect: bool = False
    segment: bool = False
    detector: str = DEFAULT_DETECTOR
    segmenter: str = DEFAULT_SEGMENTER
    model_dir: str | None = None
    region_min_score: float = DEFAULT_REGION_MIN_SCORE
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    follow_symlinks: bool = False
    roots: tuple[str, ...] | None = None
    device: str = "auto"
    precision: str = "auto"
    engine: str = "torch"
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    buffer_images: int = 256

    def __post_init__(self) -> None:
        if not 0.0 <= self.region_min_score <= 1.0:
            raise ImsearchError(f"region_min_score must be within [0, 1], got {self.region_min_score}")
        for name in ("max_bytes", "max_pixels", "batch_size", "buffer_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ImsearchError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.workers is not None and self.workers < 1:
            raise ImsearchError(f"workers must be >= 1, got {self.workers}")

    @property
    def annotates(self) -> bool:
        return self.detect or self.segment

    def with_(self, **changes: Any) -> IngestSettings:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def vision_options(self, name: str) -> dict[str, Any]:
        """Keyword arguments of a detector / segmenter back end."""
        if name.startswith("tv:"):  # torchvision back ends: weights from torchvision's cache
            return {"device": self.device}
        # ONNX files run inside the decode workers, beside the backbone: one thread each
        return {"model_dir": self.model_dir, "threads": 1}
