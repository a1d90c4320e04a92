"""Training settings: defaults, then an optional config file, then ``key=value`` overrides.

The resolved configuration is written as ``config.json`` next to the checkpoints, so a run
can always be reproduced (and resumed) from its output folder alone.

Config files are JSON (``.json``) or YAML (``.yaml``/``.yml``, needs PyYAML); both hold
one mapping of the keys below. Overrides are ``key=value`` strings where ``value`` is
parsed as JSON when it can be (``epochs=5``, ``freeze=["backbone.body.model.blocks.0"]``,
``whiten_dim=null``, ``hard_positives=true``) and taken as a plain string otherwise
(``loss=contrastive``).
"""

from __future__ import annotations

import json
import logging
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from retrieval.errors import TrainingError
from retrieval.models.descriptor import DEFAULT_MAX_SIDE, DEFAULT_SCALES
from retrieval.train.copy_whitening import DEFAULT_COPIES, DEFAULT_COPY_SHRINK

logger = logging.getLogger(__name__)

#: default triplet margin (on the squared L2 distance, as Gordo et al.) and contrastive margin (Radenović et al.)
DEFAULT_MARGINS = {"triplet": 0.1, "contrastive": 0.7}
#: keys that may differ when a run is resumed (they do not change what is computed)
RESUMABLE_KEYS = frozenset({"epochs", "device", "workers", "progress", "out", "data"})


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting; see ``imsearch train --help`` for a description of each."""

    # data
    data: str = ""
    out: str = ""
    csv_format: str = "auto"  # auto | groups | triplets
    path_column: str = "path"
    group_column: str = "group"
    anchor_column: str = "anchor"
    positive_column: str = "positive"
    negative_column: str = "negative"
    val_fraction: float = 0.1  # held out for validation: of the groups (never split), or of the photos (self-sup.)
    min_val_groups: int = 2
    self_supervised: bool = False  # every photo its own group, positives its edited copies (auto for plain photos)
    val_copy_queries: int = 200  # copy validation: edited copies of held-out photos queried each epoch (0: off)
    val_distractors: int = 500  # copy validation: training photos added to the held-out originals
    # model
    init_model: str | None = None  # a DescriptorModel artifact to start from (else backbone + weights)
    backbone: str = "efficientnet_lite0"
    weights: str = "default"
    pooling: str = "rmac"  # rmac | gem
    gem_p: float = 3.0
    max_side: int = DEFAULT_MAX_SIDE  # inference meta of a new model
    scales: list[float] = field(default_factory=lambda: list(DEFAULT_SCALES))
    whiten: bool = True
    whiten_dim: int | None = None  # None: as many as the backbone's channels
    whiten_power: float = 0.0  # eigenvalue power of the initial projection: 0 = PCA rotation (measured best)
    whitening_images: int = 1000
    whiten_method: str = "auto"  # auto (copies if self-supervised, else pca) | pca | lw (from the groups) | copies
    lw_shrink: float = 0.75  # lw: within-group covariance shrunk towards the identity by this much
    whiten_copies: int = DEFAULT_COPIES  # copies: edited copies per photo the whitening is learned from
    copy_shrink: float = DEFAULT_COPY_SHRINK  # copies: shrinkage towards the identity
    # loss
    loss: str = "triplet"  # triplet | contrastive
    margin: float | None = None  # None: 0.1 (triplet) / 0.7 (contrastive)
    distance: str = "squared"  # triplet only: squared | euclidean
    koleo_weight: float = 0.0  # KoLeo (uniformity) regularizer over the batch's distinct photos, as SSCD
    # mining and batches
    epochs: int = 10
    queries_per_epoch: int = 500
    pool_size: int = 2000
    negatives: int = 5
    hard_positives: bool = False
    anchor_original: float = 0.5  # self-supervised: chance the anchor is the photo itself (else an edit of it)
    negative_edit: float = 0.5  # self-supervised: chance a pool photo is mined and shown as an edit of it
    mine_triplets: bool = False  # triplets CSV: add negatives - 1 mined negatives to each listed triplet
    positive_candidates: int = 8
    query_sampling: str = "balanced"  # balanced (group first) | uniform (image first)
    batch_size: int = 4  # tuples per forward pass
    accumulate: int = 1  # forward passes per optimizer step
    # optimization
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-5
    head_lr_mult: float = 10.0
    weight_decay: float = 1e-6
    momentum: float = 0.9
    lr_decay: float = 0.97  # per epoch
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes kept fixed
    wise_alpha: float = 1.0  # saved models: init + wise_alpha * (trained - init); 1 = plain fine-tuning
    # images and augmentation
    image_size: int = 320
    augment: bool = True
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])
    flip: bool = True
    color_jitter: float = 0.2
    # runtime
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    channels_last: bool = True
    workers: int = 2
    mining_batch: int = 16
    progress: bool = True

    # ------------------------------------------------------------------ derived
    @property
    def resolved_margin(self) -> float:
        return DEFAULT_MARGINS[self.loss] if self.margin is None else float(self.margin)

    @property
    def resolved_whiten_method(self) -> str:
        """``whiten_method`` with ``auto`` resolved: ``copies`` for self-supervised runs, else ``pca``."""
        if self.whiten_method != "auto":
            return self.whiten_method
        return "copies" if self.self_supervised else "pca"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["margin"] = self.resolved_margin
        return d

    def validate(self) -> TrainConfig:
        """Check ranges and choices; returns ``self`` with the margin resolved."""
        _choice("csv_format", self.csv_format, ("auto", "groups", "triplets"))
        _choice("pooling", self.pooling, ("rmac", "gem"))
        _choice("whiten_method", self.whiten_method, ("auto", "pca", "lw", "copies"))
        if not 0.0 <= self.lw_shrink <= 1.0:
            raise TrainingError(f"lw_shrink must be in [0, 1], got {self.lw_shrink}")
        if self.self_supervised and self.whiten_method == "lw":
            raise TrainingError("whiten_method=lw learns from groups, and a self-supervised run has none (every "
                                "photo is its own group); use whiten_method=copies (the default) or pca")
        if not 0.0 <= self.copy_shrink <= 1.0:
            raise TrainingError(f"copy_shrink must be in [0, 1], got {self.copy_shrink}")
        for name in ("anchor_original", "negative_edit"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise TrainingError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name in ("koleo_weight", "val_copy_queries", "val_distractors"):
            if getattr(self, name) < 0:
                raise TrainingError(f"{name} must be >= 0, got {getattr(self, name)}")
        _choice("loss", self.loss, ("triplet", "contrastive"))
        _choice("distance", self.distance, ("squared", "euclidean"))
        _choice("query_sampling", self.query_sampling, ("balanced", "uniform"))
        _choice("optimizer", self.optimizer, ("adam", "sgd"))
        _choice("precision", self.precision, ("auto", "bf16", "fp16", "fp32"))
        for name in ("epochs", "queries_per_epoch", "pool_size", "negatives", "batch_size", "accumulate",
                     "positive_candidates", "workers", "mining_batch", "whitening_images", "min_val_groups",
                     "whiten_copies"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 32 <= self.image_size <= 4096:
            raise TrainingError(f"image_size must be within 32..4096 pixels, got {self.image_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise TrainingError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.resolved_margin <= 0:
            raise TrainingError(f"margin must be > 0, got {self.margin}")
        if self.lr <= 0 or self.head_lr_mult <= 0 or not 0 < self.lr_decay <= 1:
            raise TrainingError("lr and head_lr_mult must be > 0 and lr_decay in (0, 1]")
        if not (len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1):
            raise TrainingError(f"crop_scale must be [min, max] with 0 < min <= max <= 1, got {self.crop_scale}")
        if not (len(self.crop_ratio) == 2 and 0 < self.crop_ratio[0] <= self.crop_ratio[1]):
            raise TrainingError(f"crop_ratio must be [min, max] with 0 < min <= max, got {self.crop_ratio}")
        if not 0 < self.wise_alpha <= 1:
            raise TrainingError(f"wise_alpha must be in (0, 1], got {self.wise_alpha}")
        if not 0 <= self.color_jitter < 1:
            raise TrainingError(f"color_jitter must be in [0, 1), got {self.color_jitter}")
        return replace(self, margin=self.resolved_margin)


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise TrainingError(f"{name} must be one of {', '.join(valid)}; got {value!r}")


# --------------------------------------------------------------------------- layering
_HINTS: dict[str, Any] = {}


def _hints() -> dict[str, Any]:
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(TrainConfig))
    return _HINTS


def _coerce(key: str, value: Any) -> Any:
    """Check ``value`` against the type of field ``key`` (ints are accepted for floats)."""
    hint = _hints()[key]
    args = typing.get_args(hint)
    optional = type(None) in args and (typing.get_origin(hint) in (typing.Union, types.UnionType))
    if value is None:
        if optional:
            return None
        raise TrainingError(f"{key} cannot be null")
    base = next(a for a in args if a is not type(None)) if optional else hint
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        if not isinstance(value, list):
            raise TrainingError(f"{key} must be a list (e.g. {key}=[1, 2]), got {value!r}")
        return [_scalar(key, v, item) for v in value]
    return _scalar(key, value, base)


def _scalar(key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (str, bool) and isinstance(value, kind):
        return value
    raise TrainingError(f"{key} must be {kind.__name__}, got {value!r} ({type(value).__name__})")


def apply_mapping(config: TrainConfig, values: dict[str, Any], origin: str) -> TrainConfig:
    """``config`` with the keys of ``values`` replaced (type-checked); unknown keys are an error."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TrainingError(f"{origin}: unknown setting(s) {unknown}; valid settings: {', '.join(sorted(known))}")
    return replace(config, **{k: _coerce(k, v) for k, v in values.items()})


def parse_override(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, value)``, the value parsed as JSON when possible."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise TrainingError(f"override {text!r} is not key=value (e.g. --set epochs=5)")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON or YAML file holding one mapping of settings."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise TrainingError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use JSON") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TrainingError(f"{path} is not valid YAML: {exc}") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TrainingError(f"{path} is not valid JSON ({exc}); YAML files must end in .yaml or .yml") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TrainingError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def resolve_config(
    config_file: str | Path | None = None,
    overrides: typing.Sequence[str] | dict[str, Any] = (),
    *,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Defaults (or ``base``), then ``config_file``, then ``overrides``; validated."""
    config = base or TrainConfig()
    if config_file is not None:
        config = apply_mapping(config, read_config_file(config_file), str(config_file))
    values = dict(overrides) if isinstance(overrides, dict) else dict(parse_override(o) for o in overrides)
    config = apply_mapping(config, values, "overrides")
    return config.validate()


def write_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the resolved configuration as JSON (sorted keys, one setting per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a config written by :func:`write_config` (or stored in a checkpoint)."""
    return apply_mapping(TrainConfig(), data, "saved config").validate()


def differing_keys(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Settings whose values differ between ``a`` and ``b`` (margin compared resolved)."""
    da, db = a.to_dict(), b.to_dict()
    return sorted(k for k in da if da[k] != db[k])
