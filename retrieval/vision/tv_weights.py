"""Building torchvision detection/segmentation models with their weights, or a clear error.

Weights come from torchvision's download-and-cache path (``weights="DEFAULT"`` or a
weights enum member name), from a local state-dict file (``weights_path=``), or are
random (``weights="random"``, for tests only). Class names always come from the weights
enum's ``meta["categories"]``, which ships with torchvision and needs no download.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision.models as tvm

from retrieval.errors import ModelFormatError, UnknownNameError, WeightsUnavailableError
from retrieval.vision.modelfiles import file_sha256

logger = logging.getLogger(__name__)

TV_DETECTORS: tuple[str, ...] = ("fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn_v2")
TV_SEGMENTERS: tuple[str, ...] = ("deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
RANDOM = "random"


@dataclass(frozen=True)
class LoadedModel:
    """A torchvision model in eval mode, its raw category list and where its weights came from."""

    module: torch.nn.Module
    categories: list[str]
    weights: str
    sha256: str | None


def _weights_enum_member(arch: str, weights: str) -> Any:
    enum = tvm.get_model_weights(arch)
    if weights.upper() == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[weights]
    except KeyError:
        valid = ["DEFAULT", RANDOM, *(m.name for m in enum)]
        raise UnknownNameError(f"{arch} weights", weights, valid) from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsUnavailableError(
            f"weights file {path} not found; pass weights_path= an existing state-dict file"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle and zip errors vary by torch version
        raise ModelFormatError(f"{path} is not a readable torch state dict: {exc}") from exc
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ModelFormatError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict loading, except BatchNorm counters that frozen-BN checkpoints never store."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ModelFormatError(f"{source} does not fit this architecture: {exc}") from exc
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ModelFormatError(
            f"{source} does not fit this architecture: missing keys {missing[:5]}, unexpected keys "
            f"{result.unexpected_keys[:5]}; pass the state dict of the same torchvision model"
        )


def _cached_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def load_torchvision_model(
    arch: str, *, weights: str = "DEFAULT", weights_path: str | os.PathLike[str] | None = None
) -> LoadedModel:
    """Build ``arch`` with the asked weights, in eval mode on the CPU (see module doc)."""
    if arch not in TV_DETECTORS + TV_SEGMENTERS:
        raise UnknownNameError("torchvision model", arch, list(TV_DETECTORS + TV_SEGMENTERS))
    member = _weights_enum_member(arch, "DEFAULT" if weights == RANDOM else weights)
    categories = list(member.meta["categories"])
    builder = tvm.get_model_builder(arch)
    extra: dict[str, Any] = {}
    if weights == RANDOM or weights_path is not None:
        path = Path(weights_path) if weights_path is not None else None
        state = _read_state_dict(path) if path is not None else None
        if arch.startswith("deeplabv3"):
            extra["aux_loss"] = state is not None and any(k.startswith("aux_classifier.") for k in state)
        module = builder(weights=None, weights_backbone=None, num_classes=len(categories), **extra)
        if state is None or path is None:
            logger.warning("%s built with RANDOM weights: its outputs are meaningless (tests only)", arch)
            return LoadedModel(module.eval(), categories, RANDOM, None)
        _load_state(module, state, str(path))
        return LoadedModel(module.eval(), categories, f"file:{path.name}", file_sha256(path))
    cached = _cached_file(member.url)
    try:
        module = builder(weights=member, progress=False)
    except OSError as exc:  # URLError (offline) is an OSError
        raise WeightsUnavailableError(
            f"torchvision weights {member} could not be fetched from {member.url} ({exc}). Either download "
            f"that file to {cached} (torchvision's cache), or pass weights_path=<the .pth file>"
        ) from exc
    digest = file_sha256(cached) if cached.is_file() else None
    return LoadedModel(module.eval(), categories, str(member), digest)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as torch understands it."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
