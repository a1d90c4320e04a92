"""Training images: decoded once at the training size, then augmented on the fly.

:class:`ImageCache` keeps each image as ``uint8 (H, W, 3)`` with its long side equal to the
training ``image_size`` (aspect ratio kept): the arrays mining and validation describe,
and the source of the augmented training crops. Decoding runs in a thread pool.

:class:`Augmenter` makes the fixed-size square crops a training batch is stacked from
(torchvision transforms v2 on ``uint8`` tensors): a random resized crop (area and aspect
within limits), a horizontal flip and colour jitter; or, without augmentation, the whole
image resized to the square. Randomness comes from torch's global generator, which the
trainer seeds per epoch, so runs are reproducible.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from retrieval.errors import ImageDecodeError, TrainingError
from retrieval.imageio import decode_image
from retrieval.progress import Mode, Progress

logger = logging.getLogger(__name__)

#: image loads (and, in the trainer, descriptions) shorter than this show no progress
PROGRESS_MIN_ITEMS = 64


def resize_long_side(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(H, W, 3)`` uint8 so its long side is ``size`` (aspect kept, bilinear)."""
    h, w = pixels.shape[:2]
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if new == (w, h):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize(new, Image.Resampling.BILINEAR))


class ImageCache:
    """Decoded training images at ``size`` (long side), loaded on first use and kept."""

    def __init__(self, paths: Sequence[Path], size: int, *, workers: int = 2, progress: bool = False) -> None:
        self.paths = list(paths)
        self.size = size
        self.workers = max(1, workers)
        self.progress = progress  # show loads of PROGRESS_MIN_ITEMS images or more
        self._arrays: dict[int, np.ndarray] = {}

    def _load(self, index: int) -> np.ndarray:
        path = self.paths[index]
        try:
            decoded = decode_image(path, max_side=self.size)
        except ImageDecodeError as exc:
            raise TrainingError(f"training image {path} cannot be used: {exc.reason}; remove it from the data") from exc
        return np.array(resize_long_side(decoded.pixels, self.size), dtype=np.uint8, order="C")  # writable copy

    def ensure(self, indices: Sequence[int]) -> None:
        """Decode every image of ``indices`` not cached yet (in parallel)."""
        todo = sorted({int(i) for i in indices} - set(self._arrays))
        if not todo:
            return
        mode: Mode = "auto" if self.progress and len(todo) >= PROGRESS_MIN_ITEMS else "off"
        with ThreadPoolExecutor(self.workers, thread_name_prefix="imsearch-train-decode") as pool, \
                Progress(len(todo), desc="loading training images", unit="images", logger=logger, mode=mode) as bar:
            for i, arr in zip(todo, pool.map(self._load, todo), strict=True):
                self._arrays[i] = arr
                bar.update()

    def get(self, index: int) -> np.ndarray:
        """``(H, W, 3)`` uint8, long side ``size``."""
        arr = self._arrays.get(index)
        if arr is None:
            arr = self._arrays[index] = self._load(index)
        return arr

    def __len__(self) -> int:
        return len(self.paths)


class Augmenter:
    """``(H, W, 3)`` uint8 array -> ``(3, size, size)`` uint8 tensor (random unless ``augment=False``)."""

    def __init__(
        self,
        size: int,
        *,
        augment: bool = True,
        crop_scale: Sequence[float] = (0.5, 1.0),
        crop_ratio: Sequence[float] = (0.75, 1.3333),
        flip: bool = True,
        color_jitter: float = 0.2,
    ) -> None:
        self.size = size
        steps: list[torch.nn.Module]
        if augment:
            steps = [
                v2.RandomResizedCrop(
                    (size, size), scale=(crop_scale[0], crop_scale[1]), ratio=(crop_ratio[0], crop_ratio[1]),
                    antialias=True,
                )
            ]
            if flip:
                steps.append(v2.RandomHorizontalFlip())
            if color_jitter > 0:
                steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
        else:
            steps = [v2.Resize((size, size), antialias=True)]
        self.transform = v2.Compose(steps)

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
        out: torch.Tensor = self.transform(x)
        return out.contiguous()

    def batch(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack the augmented crops: ``(B, 3, size, size)`` uint8."""
        return torch.stack([self(a) for a in arrays])
