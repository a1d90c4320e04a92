"""Building what a training run needs: the model (with its initial whitening), the optimizer.

* The model starts from a saved artifact (``init_model``) or from a registered backbone
  and its weights. Without whitening yet, it gets the PCA-whitening learned on the
  TRAINING images' region vectors (R-MAC) or pooled vectors (GeM) at the model's own
  inference size and scales (:meth:`Extractor.learn_whitening`): the "shift + projection"
  that training then fine-tunes with the rest of the network (Gordo et al.). Or a learned
  whitening: from the groups (``lw``), or from (photo, edited copy) pairs (``copies``,
  :func:`retrieval.train.copy_whitening.learn_copy_whitening`; the default of
  self-supervised runs).
* BatchNorm layers stay in eval mode (frozen statistics: batches are small); parameters
  whose names start with one of ``freeze`` are not trained.
* Two parameter groups: the backbone at ``lr``, the head (whitening, GeM's p) at
  ``lr * head_lr_mult``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from retrieval.errors import TrainingError
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import ExtractItem, Extractor
from retrieval.models.whitening import WhiteningParams, learn_lw_whitening
from retrieval.train.config import TrainConfig
from retrieval.train.data import TrainingData, load_training_data, split_by_group
from retrieval.train.photos import photo_data, split_by_photo

logger = logging.getLogger(__name__)


def prepare_data(
    config: TrainConfig, data: TrainingData | None = None
) -> tuple[TrainConfig, TrainingData, TrainingData | None]:
    """The run's data (read from ``config.data`` unless given) split for validation, and the config
    with what the data decided filled in: ``self_supervised`` and the ``whiten_method`` of ``auto``.

    Self-supervised data holds out photos (:func:`split_by_photo`); grouped data, whole groups.
    """
    if data is None:
        data = load_training_data(
            config.data, csv_format=config.csv_format, path_column=config.path_column,
            group_column=config.group_column, anchor_column=config.anchor_column,
            positive_column=config.positive_column, negative_column=config.negative_column,
            self_supervised=config.self_supervised,
        )
    if config.self_supervised and not data.self_supervised:
        data = photo_data(data.paths, data.source)  # asked for: the groups are not used
    config = replace(config, self_supervised=data.self_supervised)
    config = replace(config, whiten_method=config.resolved_whiten_method).validate()
    if config.self_supervised:
        train, val = split_by_photo(data, config.val_fraction, seed=config.seed)
    else:
        train, val = split_by_group(data, config.val_fraction, min_val_groups=config.min_val_groups, seed=config.seed)
    if len(train.members()) < 2:
        raise TrainingError("training needs at least 2 groups (negatives come from other groups)")
    return config, train, val


def build_model(config: TrainConfig) -> DescriptorModel:
    """The starting model: ``init_model`` when given, else backbone + weights + pooling."""
    if config.init_model:
        model = DescriptorModel.load(config.init_model)
        logger.info("starting from %s: %s", config.init_model, model.meta.describe())
        if model.meta.backbone != config.backbone or model.meta.pooling != config.pooling:
            logger.info("init_model sets the backbone and pooling (%s, %s)", model.meta.backbone, model.meta.pooling)
        return model
    params = {"p": config.gem_p} if config.pooling == "gem" else {}
    return DescriptorModel.create(
        config.backbone,
        weights=config.weights,
        pooling=config.pooling,
        pooling_params=params,
        scales=config.scales,
        max_side=config.max_side,
        name="imsearch-train",
        seed=config.seed,
    )


def init_whitening(model: DescriptorModel, data: TrainingData, config: TrainConfig, device: torch.device) -> None:
    """Learn the initial whitening on (a seeded sample of) the training images, unless the model has one:
    PCA (``whiten_method=pca``), learned from the groups (``lw``: :func:`learn_lw_whitening`), or
    learned from the photos and edited copies of them (``copies``: :func:`learn_copy_whitening`)."""
    if model.whiten is not None or not config.whiten:
        return
    rng = np.random.default_rng([config.seed, 7919])
    count = min(config.whitening_images, len(data))
    pick = np.sort(rng.choice(len(data), size=count, replace=False))
    sources = [data.paths[i] for i in pick.tolist()]
    extractor = Extractor(model, device=device, precision=config.precision, batch_size=config.mining_batch,
                          workers=config.workers)
    method = config.resolved_whiten_method
    if method == "lw":
        params = learn_lw_from_images(extractor, sources, data.groups[pick], config.whiten_dim, config.lw_shrink)
        what = "learned whitening (lw)"
    elif method == "copies":
        params = learn_from_copies(model, sources, config, device)
        what = f"learned whitening from {config.whiten_copies} edited copies of each"
    else:
        params = extractor.learn_whitening(sources, config.whiten_dim, power=config.whiten_power)
        what = "PCA-whitening"
    model.set_whitening(params, learned_from=f"{what} of {count} training images of "
                                             f"{data.source or 'the training data'}")
    logger.info("initial whitening learned from %d training images (%d vectors)", count, params.n_samples)


def learn_from_copies(
    model: DescriptorModel, sources: list[Path], config: TrainConfig, device: torch.device
) -> WhiteningParams:
    """:func:`retrieval.train.copy_whitening.learn_copy_whitening` with the run's settings."""
    from retrieval.train.copy_whitening import learn_copy_whitening

    return learn_copy_whitening(
        model, sources, copies=config.whiten_copies, seed=config.seed, dim=config.whiten_dim,
        shrink=config.copy_shrink,
        batch_size=config.mining_batch, device=device, workers=config.workers, precision=config.precision,
    )


def learn_lw_from_images(
    extractor: Extractor, sources: list[Path], groups: np.ndarray, dim: int | None, shrink: float
) -> WhiteningParams:
    """Learned whitening from the images' descriptors (undecodable images are skipped and logged)."""
    descs: list[np.ndarray] = []
    kept: list[int] = []
    for res in extractor.iter_extract(ExtractItem(i, p) for i, p in enumerate(sources)):
        if res.error is not None or res.descriptor is None:
            logger.warning("whitening: skipping image %s: %s", sources[int(res.key)], res.error)  # type: ignore[call-overload]
            continue
        descs.append(res.descriptor)
        kept.append(int(res.key))  # type: ignore[call-overload]
    if not descs:
        raise TrainingError("learned whitening: none of the training images could be read")
    order = np.argsort(kept)
    return learn_lw_whitening(np.stack(descs)[order], groups[np.asarray(kept)[order]], dim, shrink=shrink)


def freeze_batchnorm(model: nn.Module) -> None:
    """Every BatchNorm layer in eval mode: running statistics are used and not updated."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def train_mode(model: nn.Module) -> None:
    """Training mode with frozen BatchNorm."""
    model.train()
    freeze_batchnorm(model)


def apply_freeze(model: nn.Module, prefixes: list[str]) -> int:
    """Stop training the parameters named ``prefix...``; returns how many tensors were frozen."""
    names = [n for n, _ in model.named_parameters()]
    frozen = 0
    for prefix in prefixes:
        hits = [n for n in names if n == prefix or n.startswith(prefix.rstrip(".") + ".")]
        if not hits:
            tops = sorted({".".join(n.split(".")[:4]) for n in names})[:30]
            raise TrainingError(f"freeze: no parameter is named {prefix!r}...; some parameter prefixes: {tops}")
        for name, param in model.named_parameters():
            if name in hits:
                param.requires_grad_(False)
                frozen += 1
    if frozen:
        logger.info("froze %d parameter tensors (%s)", frozen, ", ".join(prefixes))
    return frozen


def build_optimizer(model: DescriptorModel, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD over two groups: the backbone at ``lr``, the head at ``lr * head_lr_mult``."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    head_ids = {id(p) for p in model.backbone.parameters()}
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [
        {"params": backbone, "lr": config.lr, "base_lr": config.lr},
        {"params": head, "lr": config.lr * config.head_lr_mult, "base_lr": config.lr * config.head_lr_mult},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise TrainingError("every parameter is frozen: nothing to train (check the freeze setting)")
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


def set_epoch_lr(optimizer: torch.optim.Optimizer, decay: float, epoch: int) -> float:
    """Exponential decay: ``base_lr * decay ** (epoch - 1)`` for each group; returns the backbone lr."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * decay ** (epoch - 1)
    return float(optimizer.param_groups[0]["lr"])


def check_out_dir(out: Path, resume: bool) -> None:
    """A fresh run must not overwrite another run's checkpoint; a resumed one needs it."""
    ckpt = out / "checkpoint.pt"
    if resume and not ckpt.is_file():
        raise TrainingError(f"--resume: {out} holds no checkpoint.pt; start a new run without --resume")
    if not resume and ckpt.is_file():
        raise TrainingError(
            f"{out} already holds a training run (checkpoint.pt); continue it with --resume, or choose another --out"
        )
