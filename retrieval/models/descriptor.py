"""DescriptorModel: backbone -> [ReLU+] -> pooling -> [whitening] -> L2 per scale, scales combined -> L2,
saved as one artifact with its metadata.

Pooling options (:mod:`retrieval.models.pooling`): ``pooling`` names the pooling
(``rmac``, ``gem``, ``rgem``, ``mac``, ``spoc``) and ``pooling_params`` its settings (e.g.
``{"p": 4.6}`` for GeM+); the extra key ``relu_eps`` turns on ReLU+ (activations clamped at
that floor before pooling). ``scale_agg`` says how the per-scale descriptors become one:
``"sum"`` (the default), ``"max"`` or ``"gem"`` (Scale-GeM, exponent ``scale_p``). Defaults
are left out of the stored metadata, so every model saved before these options has the same
metadata, fingerprint and descriptors as before.

The model's identity (:class:`ModelMeta` plus a fingerprint of its weights) is stored
with every index built by it; querying an index with another model is a
:class:`ModelMismatchError`, never silent garbage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from retrieval.errors import ImsearchError, ModelFormatError, ModelMismatchError
from retrieval.models.backbones import DEFAULT_BACKBONE, Backbone, backbone_spec, create_backbone
from retrieval.models.pooling import (
    RMAC,
    GeM,
    RegionalGeM,
    ReLUPlus,
    combine_scales,
    create_pooling,
    l2n,
    pool_boxes,
    rmac_region_vectors,
)
from retrieval.models.pooling_defaults import EPS, SCALE_AGGS, SCALE_GEM_P
from retrieval.models.whitening import Whitening, WhiteningParams

logger = logging.getLogger(__name__)

ARTIFACT_FORMAT = "imsearch-descriptor-model"
FORMAT_VERSION = 1
DEFAULT_SCALES = (1.0, 1.0 / math.sqrt(2.0), 0.5)
DEFAULT_MAX_SIDE = 512
#: the ``pooling_params`` key of ReLU+ (not a parameter of the pooling itself)
RELU_EPS_KEY = "relu_eps"
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ModelMeta:
    """Everything needed to rebuild the model and to tell two models apart."""

    backbone: str
    weights: str
    pooling: str = "rmac"
    pooling_params: dict[str, float] = field(default_factory=dict)
    scales: tuple[float, ...] = DEFAULT_SCALES
    max_side: int = DEFAULT_MAX_SIDE
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    stride: int = 32
    channels: int = 1280
    whitening: dict[str, Any] | None = None
    dim: int = 1280
    name: str = ""
    format_version: int = FORMAT_VERSION
    scale_agg: str = "sum"
    scale_p: float = SCALE_GEM_P  # Scale-GeM's exponent; used (and stored) only with scale_agg "gem"

    def __post_init__(self) -> None:
        if self.scale_agg not in SCALE_AGGS:
            raise ModelFormatError(f"scale_agg must be one of {', '.join(SCALE_AGGS)}, got {self.scale_agg!r}")
        if self.scale_agg != "gem":  # one meta per model: an unused exponent does not make another one
            object.__setattr__(self, "scale_p", SCALE_GEM_P)
        elif not (isinstance(self.scale_p, (int, float)) and 0 < float(self.scale_p) < math.inf):
            raise ModelFormatError(f"scale_p (Scale-GeM's exponent) must be a number in (0, inf), got {self.scale_p!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scales"] = list(self.scales)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        # defaults left out: models from before these fields keep their metadata and fingerprint
        if self.scale_agg == "sum":
            del d["scale_agg"]
        if self.scale_agg != "gem":
            del d["scale_p"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        if not isinstance(data, dict):
            raise ModelFormatError(f"model metadata must be a mapping, got {type(data).__name__}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelFormatError(
                f"model format version {version!r} is not supported (this imsearch reads version {FORMAT_VERSION})"
            )
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelFormatError(f"unknown model metadata fields {unknown}")
        try:
            d = dict(data)
            d["scales"] = tuple(float(s) for s in d.get("scales", DEFAULT_SCALES))
            d["mean"] = tuple(float(s) for s in d["mean"])
            d["std"] = tuple(float(s) for s in d["std"])
            if "scale_p" in d:
                d["scale_p"] = float(d["scale_p"])
            return cls(**d)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"invalid model metadata: {exc}") from exc

    def identity(self) -> dict[str, Any]:
        """The fields that decide what descriptors the model produces (not its name)."""
        d = self.to_dict()
        d.pop("name")
        return d

    def describe(self) -> str:
        white = f"whitened to {self.whitening['dim']}" if self.whitening else "no whitening"
        scales = ",".join(f"{s:.3g}" for s in self.scales)
        pooling = self.pooling
        if self.pooling_params:
            pooling += "(" + ", ".join(f"{k}={v:g}" for k, v in sorted(self.pooling_params.items())) + ")"
        if self.scale_agg != "sum":
            scales += f" ({self.scale_agg}" + (f" p={self.scale_p:g})" if self.scale_agg == "gem" else ")")
        return (
            f"{self.backbone} ({self.weights}), {pooling}, {white}, dim {self.dim}, "
            f"max side {self.max_side}, scales {scales}"
        )


class DescriptorModel(nn.Module):
    """Backbone + descriptor head. ``forward(x)`` gives L2-normalized ``(B, dim)`` descriptors."""

    def __init__(self, backbone: Backbone, meta: ModelMeta, whitening: Whitening | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.meta = meta
        params = dict(meta.pooling_params)
        relu_eps = params.pop(RELU_EPS_KEY, None)
        try:
            self.pool = create_pooling(meta.pooling, **params)
            #: ReLU+ before pooling (no weights: the state dict is the same with or without it)
            self.relu_plus = None if relu_eps is None else ReLUPlus(float(relu_eps))
        except (TypeError, ValueError) as exc:
            raise ModelFormatError(
                f"invalid pooling settings {meta.pooling!r} {dict(meta.pooling_params)}: {exc}"
            ) from exc
        self.whiten = whitening
        self.register_buffer("mean", torch.tensor(meta.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(meta.std).view(1, 3, 1, 1), persistent=False)
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def create(
        cls,
        backbone: str = DEFAULT_BACKBONE,
        *,
        weights: str | Path | None = "default",
        pooling: str = "rmac",
        pooling_params: dict[str, float] | None = None,
        scales: Sequence[float] = DEFAULT_SCALES,
        max_side: int = DEFAULT_MAX_SIDE,
        scale_agg: str = "sum",
        scale_p: float = SCALE_GEM_P,
        name: str = "",
        seed: int = 0,
    ) -> DescriptorModel:
        """A model with no whitening, from a registered backbone and its weights.

        ``pooling_params`` may hold ``relu_eps`` (ReLU+); ``scale_agg``/``scale_p`` choose how
        the scales are combined (see the module docstring).
        """
        spec = backbone_spec(backbone)
        scales_t = tuple(float(s) for s in scales)
        if not scales_t or any(not 0.0 < s <= 4.0 for s in scales_t):
            raise ModelFormatError(f"scales must be a non-empty list of numbers in (0, 4], got {list(scales)}")
        if not 32 <= int(max_side) <= 8192:
            raise ModelFormatError(f"max_side must be within 32..8192 pixels, got {max_side}")
        net, origin = create_backbone(backbone, weights, seed=seed)
        meta = ModelMeta(
            backbone=backbone,
            weights=origin,
            pooling=pooling,
            pooling_params=dict(pooling_params or {}),
            scales=scales_t,
            max_side=int(max_side),
            mean=spec.mean,
            std=spec.std,
            stride=spec.stride,
            channels=spec.out_channels,
            dim=spec.out_channels,
            name=name,
            scale_agg=scale_agg,
            scale_p=float(scale_p),
        )
        model = cls(net, meta)
        model.eval()
        return model

    def set_whitening(self, params: WhiteningParams | None, learned_from: str = "") -> None:
        """Install (or remove, with ``None``) a learned whitening; updates ``meta.dim``."""
        if params is None:
            self.whiten = None
            self.meta = replace(self.meta, whitening=None, dim=self.meta.channels)
        else:
            if params.weight.shape[1] != self.meta.channels:
                raise ModelFormatError(
                    f"whitening expects {params.weight.shape[1]}-d input, the backbone gives {self.meta.channels}"
                )
            layer = Whitening.from_params(params).to(next(self.parameters()).device)
            self.whiten = layer
            info = {
                "dim": int(params.weight.shape[0]),
                "power": float(params.power),
                "n_samples": int(params.n_samples),
                "learned_from": learned_from,
            }
            self.meta = replace(self.meta, whitening=info, dim=int(params.weight.shape[0]))
        self.invalidate_fingerprint()

    # ------------------------------------------------------------------ forward
    def normalize(self, x: Tensor) -> Tensor:
        """uint8 or [0, 1] float ``(B, 3, H, W)`` -> the backbone's normalized input."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        mean: Tensor = self.mean  # type: ignore[assignment]
        std: Tensor = self.std  # type: ignore[assignment]
        return (x - mean.to(x.dtype)) / std.to(x.dtype)

    def features(self, x: Tensor) -> Tensor:
        """Feature map ``(B, C, h, w)`` of a normalized batch."""
        out: Tensor = self.backbone(x)
        return out

    @property
    def scales_summed(self) -> bool:
        """Whether the image descriptor is the L2-normalized sum of the per-scale ones (what the
        :class:`~retrieval.models.extract.Extractor` computes): ``scale_agg="sum"`` or one scale."""
        return self.meta.scale_agg == "sum" or len(self.meta.scales) == 1

    def scale_descriptor(self, feats: Tensor) -> Tensor:
        """One scale's descriptor, [ReLU+] -> pool -> [whiten] -> L2 of float32 maps: ``(B, C, h, w) -> (B, dim)``."""
        feats = feats.float()
        if self.relu_plus is not None:
            feats = self.relu_plus(feats)
        if self.meta.pooling == "rmac":
            out: Tensor = self.pool(feats, projection=self.whiten)
            return out
        vec = l2n(self.pool(feats))
        if self.whiten is not None:
            vec = l2n(self.whiten(vec))
        return vec

    def head(self, feats: Tensor) -> Tensor:
        """:meth:`scale_descriptor`, for callers that add the scales up (the extractor, training).

        A model that combines its scales otherwise (Scale-GeM) refuses: summing its per-scale
        descriptors would give other descriptors than the model's. Combine them with
        :meth:`combine_scales` instead.
        """
        if not self.scales_summed:
            raise ImsearchError(
                f"this model combines its {len(self.meta.scales)} scales by {self.meta.scale_agg!r}, which the "
                "extractor does not do yet (it adds them up); describe images with a model made with "
                "scale_agg='sum' or with one scale"
            )
        return self.scale_descriptor(feats)

    def combine_scales(self, per_scale: Tensor) -> Tensor:
        """The image descriptors ``(B, dim)`` from the per-scale ones ``(S, B, dim)``, by ``meta.scale_agg``."""
        return combine_scales(per_scale.float(), self.meta.scale_agg, self.meta.scale_p)

    def describe_maps(self, maps: Sequence[Tensor]) -> Tensor:
        """The descriptors ``(B, dim)`` of a batch from its feature maps at each of the model's scales."""
        if len(maps) != len(self.meta.scales):
            raise ImsearchError(f"the model has {len(self.meta.scales)} scales, got {len(maps)} feature maps")
        return self.combine_scales(torch.stack([self.scale_descriptor(m) for m in maps]))

    def head_boxes(self, feats: Tensor, boxes: Sequence[Sequence[float]]) -> Tensor:
        """Descriptors of boxes (input-pixel coordinates) on one image's ``(C, h, w)`` map."""
        if len(boxes) == 0:
            return feats.new_zeros((0, self.meta.dim), dtype=torch.float32)
        return pool_boxes(feats.float(), boxes, float(self.meta.stride), self.head)

    def whitening_vectors(self, feats: Tensor) -> Tensor:
        """The vectors whitening is learned from: R-MAC region vectors, else L2-normalized pooled vectors."""
        feats = feats.float()
        if self.relu_plus is not None:
            feats = self.relu_plus(feats)
        if isinstance(self.pool, RMAC):
            return rmac_region_vectors(feats, self.pool.levels, self.pool.overlap).flatten(0, 1)
        return l2n(self.pool(feats))

    def head_settings(self) -> dict[str, Any]:
        """Every setting of the head with defaults resolved (what a twin of it, e.g. the numpy head, needs)."""
        pool = self.pool
        out: dict[str, Any] = {
            "pooling": self.meta.pooling,
            "relu_eps": None if self.relu_plus is None else self.relu_plus.eps,
            "scale_agg": self.meta.scale_agg,
            "scale_p": self.meta.scale_p,
        }
        if isinstance(pool, RMAC):
            out.update(levels=int(pool.levels), overlap=float(pool.overlap))
        if isinstance(pool, GeM):
            out.update(p=float(pool.p.detach()[0]), eps=float(pool.eps))
        if isinstance(pool, RegionalGeM):
            out.update(pr=pool.pr, size=pool.size)
        out.setdefault("eps", EPS)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(self.normalize(x)))

    # ------------------------------------------------------------------ identity
    def invalidate_fingerprint(self) -> None:
        """Forget the cached fingerprint (call after changing weights, e.g. training)."""
        self._fingerprint = None

    @property
    def fingerprint(self) -> str:
        """sha256 of the identity metadata and every weight: equal iff descriptors are equal."""
        if self._fingerprint is None:
            digest = hashlib.sha256(json.dumps(self.meta.identity(), sort_keys=True).encode())
            for key, tensor in sorted(self.state_dict().items()):
                digest.update(key.encode())
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def identity(self) -> dict[str, Any]:
        """What an index stores about the model that built it."""
        return {"fingerprint": self.fingerprint, "meta": self.meta.to_dict()}

    def check_compatible(self, stored: dict[str, Any] | None, what: str = "the index") -> None:
        """Raise :class:`ModelMismatchError` unless ``stored`` (an :meth:`identity`) is this model."""
        if not stored:
            return
        if stored.get("fingerprint") == self.fingerprint:
            return
        theirs = stored.get("meta") or {}
        ours = self.meta.identity()
        diffs = [
            f"{k}: {theirs.get(k)!r} there vs {ours.get(k)!r} here"
            for k in sorted(ours)
            if theirs.get(k) != ours.get(k)
        ] or ["same settings, different weights"]
        raise ModelMismatchError(
            f"{what} was built with another descriptor model ({'; '.join(diffs)}). "
            "Use the model file the index was built with, or re-index with this model "
            "(imsearch reindex --model FILE)."
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the model artifact atomically (temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": ARTIFACT_FORMAT,
            "format_version": FORMAT_VERSION,
            "meta": self.meta.to_dict(),
            "fingerprint": self.fingerprint,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }
        save_atomic(payload, path)
        logger.info("saved descriptor model to %s (%s)", path, self.meta.describe())
        return path

    @classmethod
    def load(cls, path: str | Path, *, map_location: str | torch.device = "cpu") -> DescriptorModel:
        """Read an artifact written by :meth:`save`, validating format, metadata and weights."""
        path = Path(path)
        if not path.is_file():
            raise ModelFormatError(f"model file {path} does not exist")
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:
            raise ModelFormatError(f"{path} is not a readable imsearch model file: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != ARTIFACT_FORMAT:
            raise ModelFormatError(f"{path} is not an imsearch descriptor model (no '{ARTIFACT_FORMAT}' marker)")
        if payload.get("format_version") != FORMAT_VERSION:
            raise ModelFormatError(
                f"{path} has format version {payload.get('format_version')!r}; this imsearch reads {FORMAT_VERSION}"
            )
        meta = ModelMeta.from_dict(payload["meta"])
        backbone, _ = create_backbone(meta.backbone, None)
        whitening = None
        if meta.whitening is not None:
            whitening = Whitening(meta.channels, int(meta.whitening["dim"]))
        model = cls(backbone, meta, whitening)
        try:
            model.load_state_dict(payload["state_dict"], strict=True)
        except RuntimeError as exc:
            raise ModelFormatError(f"{path}: weights do not match its metadata: {exc}") from exc
        model.eval()
        if payload.get("fingerprint") != model.fingerprint:
            raise ModelFormatError(f"{path}: fingerprint check failed (the file is corrupt or was edited)")
        return model

    # ------------------------------------------------------------------ helpers
    @property
    def gem_p(self) -> float | None:
        """GeM's current exponent (None for other poolings)."""
        return float(self.pool.p.detach()[0]) if isinstance(self.pool, GeM) else None


def save_atomic(payload: Any, path: Path) -> Path:
    """``torch.save`` into a temporary file beside ``path``, fsync, rename: a crash leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def descriptors_to_numpy(x: Tensor) -> np.ndarray:
    """float32 C-contiguous numpy copy of a descriptor tensor."""
    return np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
