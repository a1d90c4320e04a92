"""End-to-end training of a :class:`DescriptorModel` with a ranking loss and hard-negative mining.

One epoch: (1) with the current network, describe the epoch's queries and a random pool
of training images at the training size and mine hard negatives (:mod:`.mining`); (2) run
the tuples through the network in batches of augmented square crops, backbone in mixed
precision (bf16 autocast on CPU, bf16/fp16 on CUDA), head in float32, and step the
optimizer every ``accumulate`` batches; (3) validate: the mAP on the held-out groups (each
image a query against the others, at the training size) and copy detection of edited copies
of held-out photos (:mod:`.validation`); (4) write ``last.pt`` (and ``best.pt`` when the
selection metric improved: the epoch-0 model, the starting one, counts, so ``best.pt`` is
never worse on validation than the start), the checkpoint, ``history.jsonl`` and
``training.png`` into the output folder.

Self-supervised runs (:mod:`.selfsup`; unlabelled photos, every photo its own group) hold
out photos instead of groups, train on edited copies (no random crop augmentation: the
edits are the augmentation) and select ``best.pt`` on the copy-detection μAP; category
runs select on the held-out groups' mAP.

With ``wise_alpha < 1`` the saved (and validated) models are the weight-space ensemble
``init + wise_alpha * (trained - init)`` of the starting and the fine-tuned weights
(Wortsman et al., "Robust fine-tuning of zero-shot models", 2022): it keeps more of what the
pretrained network knew about classes absent from the training data. Training itself, and
the checkpoint, always continue from the raw fine-tuned weights.

Randomness is drawn from generators seeded with ``(seed, epoch)``, so a run resumed
from its end-of-epoch checkpoint continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from retrieval.errors import TrainingError
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import resolve_device, resolve_precision
from retrieval.progress import Progress
from retrieval.train import setup
from retrieval.train.checkpoint import TrainState, load_checkpoint, save_checkpoint, set_rng_state, state_from_payload
from retrieval.train.config import RESUMABLE_KEYS, TrainConfig, config_from_dict, differing_keys, resolve_config
from retrieval.train.config import write_config as write_config_file
from retrieval.train.data import TrainingData
from retrieval.train.images import PROGRESS_MIN_ITEMS, Augmenter, ImageCache
from retrieval.train.losses import get_loss, koleo_loss
from retrieval.train.mining import TrainTuple, describe_arrays, mined_tuples, triplet_tuples
from retrieval.train.plot import plot_history
from retrieval.train.selfsup import View, distinct_photo_rows, epoch_edit_seed, render_view, selfsup_tuples
from retrieval.train.validation import CopyValidation, build_copy_validation, validation_metrics

logger = logging.getLogger(__name__)

#: batches whose mean loss the progress shows
LOSS_WINDOW = 20
#: what best.pt is selected on: category runs, self-supervised runs
GROUP_METRIC, COPY_METRIC = "val_map", "val_copy_uap"


@dataclass
class TrainResult:
    """Where the run left its models, and its per-epoch record."""

    out: Path
    best: Path
    last: Path
    best_epoch: int
    best_score: float
    history: list[dict[str, Any]] = field(default_factory=list)
    metric: str = GROUP_METRIC  # what best_score is (a validation metric; -loss without validation)


def run_config(
    out: str | Path,
    config_file: str | Path | None = None,
    overrides: Sequence[str] | dict[str, Any] = (),
    *,
    resume: bool = False,
) -> TrainConfig:
    """The configuration of a run: layered for a new run; the saved one (plus allowed changes) to resume."""
    out = Path(out)
    if not resume:
        return resolve_config(config_file, overrides)
    saved = config_from_dict(load_checkpoint(out / "checkpoint.pt")["config"])
    config = resolve_config(config_file, overrides, base=saved)
    changed = [k for k in differing_keys(saved, config) if k not in RESUMABLE_KEYS]
    if changed:
        raise TrainingError(
            f"--resume cannot change {changed} (the run was started with other values); only "
            f"{sorted(RESUMABLE_KEYS)} may change, e.g. --epochs to train longer"
        )
    return config


class Trainer:
    """A training run writing into ``config.out``; :meth:`fit` trains up to ``config.epochs``."""

    def __init__(self, config: TrainConfig, data: TrainingData | None = None, *, resume: bool = False) -> None:
        config = config.validate()
        if not config.out:
            raise TrainingError("no output folder: set out (--out DIR)")
        self.out = Path(config.out)
        setup.check_out_dir(self.out, resume)
        self.config, self.train_data, self.val_data = setup.prepare_data(config, data)
        config = self.config
        self.self_supervised = config.self_supervised
        what = "photos" if self.self_supervised else "groups"
        logger.info(
            "%straining on %d images in %d %s; validating on %s", "self-supervised " * self.self_supervised,
            len(self.train_data), len(self.train_data.group_names), what,
            f"{len(self.val_data)} images in {len(self.val_data.group_names)} {what}" if self.val_data else "nothing",
        )
        self.device = resolve_device(config.device)
        self.dtype = resolve_precision(config.precision, self.device)
        self.state = TrainState()
        payload = load_checkpoint(self.out / "checkpoint.pt") if resume else None
        self.model, self.init_state = self._model(payload)
        self.model.to(self.device)
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        setup.apply_freeze(self.model, config.freeze)
        self.optimizer = setup.build_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        if payload is not None:
            self.optimizer.load_state_dict(payload["optimizer"])
            if payload.get("scaler"):
                self.scaler.load_state_dict(payload["scaler"])
            self.state = state_from_payload(payload)
            set_rng_state(payload["rng"])
            logger.info("resumed %s after epoch %d (step %d)", self.out, self.state.epoch, self.state.step)
        write_config_file(config, self.out / "config.json")
        self.loss_fn = get_loss(config.loss)
        self.cache = ImageCache(self.train_data.paths, config.image_size, workers=config.workers,
                                progress=config.progress)
        self.val_cache = (
            ImageCache(self.val_data.paths, config.image_size, workers=config.workers, progress=config.progress)
            if self.val_data else None
        )
        self.augment = Augmenter(
            config.image_size, augment=config.augment, crop_scale=config.crop_scale, crop_ratio=config.crop_ratio,
            flip=config.flip, color_jitter=config.color_jitter,
        )
        self.square = Augmenter(config.image_size, augment=False)  # edited views: resized to the square
        self._render_pool = ThreadPoolExecutor(max(1, config.workers), thread_name_prefix="imsearch-train-edit")
        self.copy_val: CopyValidation | None = None
        if self.val_data is not None and self.val_cache is not None and config.val_copy_queries > 0:
            self.copy_val = build_copy_validation(
                self.val_data, self.val_cache, self.train_data, queries=config.val_copy_queries,
                distractors=config.val_distractors, seed=config.seed,
            )
        self.metric = COPY_METRIC if self.self_supervised else GROUP_METRIC

    def _model(self, payload: dict[str, Any] | None) -> tuple[DescriptorModel, dict[str, torch.Tensor]]:
        """The model to train and the starting weights: restored from the run, or built (and saved as init.pt)."""
        if payload is not None:
            init_state = DescriptorModel.load(self.out / "init.pt").state_dict()
            model = DescriptorModel.load(self.out / "last.pt")  # the structure; the weights are the checkpoint's
            model.load_state_dict(payload["model"], strict=True)
            model.invalidate_fingerprint()
            if model.fingerprint != payload["fingerprint"]:
                raise TrainingError(f"{self.out}/checkpoint.pt does not match last.pt's structure; cannot resume")
            return model, init_state
        model = setup.build_model(self.config)
        setup.init_whitening(model, self.train_data, self.config, self.device)
        model.save(self.out / "init.pt")
        return model, {k: v.detach().clone() for k, v in model.state_dict().items()}

    # ------------------------------------------------------------------ public
    def fit(self) -> TrainResult:
        """Train the remaining epochs; returns the paths of ``best.pt`` and ``last.pt``."""
        cfg = self.config
        if self.state.epoch == 0 and not self.state.history:
            self._record(0, float("nan"), 0.0, 0, time.perf_counter())
        for epoch in range(self.state.epoch + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            lr = setup.set_epoch_lr(self.optimizer, cfg.lr_decay, epoch)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_epoch_seed(cfg.seed, epoch))
                rng = np.random.default_rng([cfg.seed, epoch])
                tuples = self.epoch_tuples(rng, epoch)
                loss = self.train_epoch(tuples, epoch)
            self._record(epoch, loss, lr, len(tuples), t0)
        validated = any(self.metric in h for h in self.state.history)
        return TrainResult(
            self.out, self.out / "best.pt", self.out / "last.pt", self.state.best_epoch, self.state.best_score,
            list(self.state.history), self.metric if validated else "-loss",
        )

    def describe(
        self, indices: Sequence[int] | np.ndarray, *, validation: bool = False, model: DescriptorModel | None = None
    ) -> np.ndarray:
        """Descriptors of training (or validation) images at the training size, by the current model."""
        cache = self.val_cache if validation else self.cache
        if cache is None:
            raise TrainingError("there is no validation data")
        ids = [int(i) for i in indices]
        cache.ensure(ids)
        with Progress(len(ids), desc="describing " + ("validation images" if validation else "the mining pool"),
                      unit="images", logger=logger, mode=self._progress_mode(len(ids))) as progress:
            return describe_arrays(
                model or self.model, [cache.get(i) for i in ids], device=self.device, precision=self.config.precision,
                batch_size=self.config.mining_batch, workers=self.config.workers, progress=progress,
            )

    def describe_views(
        self, views: Sequence[View], edit_seed: int, *, model: DescriptorModel | None = None
    ) -> np.ndarray:
        """Descriptors of training photos shown as ``views`` (photo, copy index) at the training size."""
        self.cache.ensure([p for p, _ in views])
        arrays = self.render([(p, c, edit_seed) for p, c in views])
        with Progress(len(arrays), desc="describing the mining views", unit="images", logger=logger,
                      mode=self._progress_mode(len(arrays))) as progress:
            return self.describe_images(arrays, model=model, progress=progress)

    def describe_images(
        self, arrays: Sequence[np.ndarray], *, model: DescriptorModel | None = None, progress: Progress | None = None
    ) -> np.ndarray:
        """Descriptors of images of any size, each scaled to the training size (long side)."""
        return describe_arrays(
            model or self.model, arrays, device=self.device, precision=self.config.precision,
            batch_size=self.config.mining_batch, workers=self.config.workers, progress=progress,
            max_side=self.config.image_size,
        )

    def render(self, views: Sequence[tuple[int, int, int]]) -> list[np.ndarray]:
        """Training photos as ``(photo, copy index, edit seed)`` views (the copy index -1: the photo itself)."""
        return list(self._render_pool.map(lambda v: render_view(self.cache.get(v[0]), v[0], v[1], v[2]), views))

    def _progress_mode(self, items: int) -> Literal["auto", "off"]:
        """Progress for long steps only (a handful of images needs no ETA)."""
        return "auto" if self.config.progress and items >= PROGRESS_MIN_ITEMS else "off"

    def epoch_tuples(self, rng: np.random.Generator, epoch: int = 1) -> list[TrainTuple]:
        """This epoch's tuples: listed triplets, or queries with mined negatives (copies for self-supervised runs)."""
        cfg = self.config
        if self.self_supervised:
            t0 = time.perf_counter()
            tuples = selfsup_tuples(
                self.train_data, rng, self.describe_views, queries=cfg.queries_per_epoch, pool_size=cfg.pool_size,
                negatives=cfg.negatives, edit_seed=epoch_edit_seed(cfg.seed, epoch),
                anchor_original=cfg.anchor_original, negative_edit=cfg.negative_edit,
            )
            logger.info("mined %d self-supervised tuples in %.1f s", len(tuples), time.perf_counter() - t0)
            return tuples
        if self.train_data.triplets is not None:
            extra = cfg.negatives - 1 if cfg.mine_triplets else 0
            return triplet_tuples(self.train_data, rng, cfg.queries_per_epoch, self.describe,
                                  pool_size=cfg.pool_size, extra_negatives=extra)
        t0 = time.perf_counter()
        tuples = mined_tuples(
            self.train_data, rng, self.describe, queries=cfg.queries_per_epoch,
            pool_size=cfg.pool_size, negatives=cfg.negatives, hard_positives=cfg.hard_positives,
            positive_candidates=cfg.positive_candidates, balanced=cfg.query_sampling == "balanced",
        )
        logger.info("mined %d tuples in %.1f s", len(tuples), time.perf_counter() - t0)
        return tuples

    def train_epoch(self, tuples: Sequence[TrainTuple], epoch: int = 0) -> float:
        """One pass over ``tuples`` (batches of ``batch_size``); the mean batch loss.

        Progress (bar on a terminal, log lines otherwise): images/s, the epoch's ETA, and the
        mean loss of the last :data:`LOSS_WINDOW` batches once a batch ran (never a NaN before)."""
        cfg = self.config
        self.cache.ensure([i for t in tuples for i in (t.query, t.positive, *t.negatives)])
        batches = [tuples[i : i + cfg.batch_size] for i in range(0, len(tuples), cfg.batch_size)]
        losses: list[float] = []
        self.optimizer.zero_grad(set_to_none=True)
        n_images = sum(2 + len(t.negatives) for t in tuples)
        with Progress(n_images, desc=f"epoch {epoch}/{cfg.epochs}", unit="images", logger=logger,
                      mode="auto" if cfg.progress else "off") as progress:
            for b, batch in enumerate(batches):
                losses.append(self._forward_backward(batch, scale=1.0 / cfg.accumulate))
                if (b + 1) % cfg.accumulate == 0 or b + 1 == len(batches):
                    self._optimizer_step()
                progress.set_status(loss=float(np.mean(losses[-LOSS_WINDOW:])), step=self.state.step)
                progress.update(sum(2 + len(t.negatives) for t in batch))
        self.model.invalidate_fingerprint()
        return float(np.mean(losses)) if losses else float("nan")

    def fit_batch(self, batch: Sequence[TrainTuple]) -> float:
        """One optimizer step on one batch; returns the loss before the step."""
        self.cache.ensure([i for t in batch for i in (t.query, t.positive, *t.negatives)])
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._forward_backward(batch, scale=1.0)
        self._optimizer_step()
        self.model.invalidate_fingerprint()
        return loss

    def batch_loss(self, batch: Sequence[TrainTuple]) -> float:
        """The loss of ``batch`` without any update (deterministic when ``augment`` is off)."""
        self.cache.ensure([i for t in batch for i in (t.query, t.positive, *t.negatives)])
        setup.train_mode(self.model)
        with torch.no_grad():
            return float(self._loss(batch))

    def validate(self, model: DescriptorModel | None = None) -> dict[str, float]:
        """Validation metrics of ``model`` (default: the current one); empty without validation data.

        Category runs: mAP and mP@k on the held-out groups (``val_map``, ``val_mp@k``). Both kinds:
        copy detection of the held-out photos' edited copies (``val_copy_r1``, ``val_copy_map``,
        ``val_copy_uap``; :mod:`.validation`), unless ``val_copy_queries`` is 0.
        """
        if self.val_data is None or self.val_cache is None:
            return {}

        def describe(arrays: Sequence[np.ndarray]) -> np.ndarray:
            with Progress(len(arrays), desc="validating", unit="images", logger=logger,
                          mode=self._progress_mode(len(arrays))) as progress:
                return self.describe_images(arrays, model=model, progress=progress)

        return validation_metrics(describe, self.val_data, self.val_cache, self.cache, self.copy_val,
                                  groups=not self.self_supervised)

    # ------------------------------------------------------------------ internals
    def _loss(self, batch: Sequence[TrainTuple]) -> torch.Tensor:
        ids: list[int] = []
        q_pos, p_pos = [], []
        k = max(len(t.negatives) for t in batch)
        n_pos = np.zeros((len(batch), k), dtype=np.int64)
        mask = np.zeros((len(batch), k), dtype=bool)
        for r, t in enumerate(batch):
            q_pos.append(len(ids))
            p_pos.append(len(ids) + 1)
            n_pos[r, : len(t.negatives)] = np.arange(len(ids) + 2, len(ids) + 2 + len(t.negatives))
            mask[r, : len(t.negatives)] = True
            ids += [t.query, t.positive, *t.negatives]
        if batch[0].views:  # self-supervised: the views the tuples name, edited, resized to the square
            views = [(i, c, t.edit_seed) for t in batch for i, c in zip(t.images, t.views, strict=True)]
            x = self.square.batch(self.render(views))
        else:
            x = self.augment.batch([self.cache.get(i) for i in ids])
        x = x.to(self.device, non_blocking=True)
        x = self.model.normalize(x)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype != torch.float32 else contextlib.nullcontext()
        )
        with autocast:
            feats = self.model.features(x)
        desc = self.model.head(feats.float())
        neg = desc[torch.from_numpy(n_pos).to(self.device)]
        loss = self.loss_fn(
            desc[q_pos], desc[p_pos], neg, self.config.resolved_margin,
            mask=torch.from_numpy(mask).to(self.device), distance=self.config.distance,
        )
        if self.config.koleo_weight > 0:
            rows = distinct_photo_rows(batch, self.train_data.groups)
            loss = loss + self.config.koleo_weight * koleo_loss(desc[rows])
        return loss

    def _forward_backward(self, batch: Sequence[TrainTuple], scale: float) -> float:
        setup.train_mode(self.model)
        loss = self._loss(batch)
        if not torch.isfinite(loss):
            raise TrainingError(f"the loss became {float(loss)} at step {self.state.step}; lower lr")
        self.scaler.scale(loss * scale).backward()
        return float(loss.detach())

    def _optimizer_step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1

    def export_model(self) -> DescriptorModel:
        """The model to save: the trained one, or its weight-space ensemble with the start (``wise_alpha``)."""
        alpha = self.config.wise_alpha
        if alpha >= 1.0:
            return self.model
        export = copy.deepcopy(self.model)
        mixed = {
            k: (self.init_state[k].to(v.device, v.dtype) * (1 - alpha) + v.detach() * alpha)
            if v.is_floating_point() else v
            for k, v in self.model.state_dict().items()
        }
        export.load_state_dict(mixed)
        export.invalidate_fingerprint()
        return export

    def _record(self, epoch: int, loss: float, lr: float, n_tuples: int, t0: float) -> None:
        """Validate, log, and write models, checkpoint, history and plot for ``epoch``."""
        export = self.export_model()
        metrics = self.validate(export)
        entry = {
            "epoch": epoch, "step": self.state.step, "loss": loss if math.isfinite(loss) else None, "lr": lr,
            "tuples": n_tuples, **metrics, "seconds": round(time.perf_counter() - t0, 2),
        }
        self.state.history.append(entry)
        self.state.epoch = epoch
        score = metrics.get(self.metric, -loss if math.isfinite(loss) else float("-inf"))
        shown = " ".join(([f"loss {loss:.4f}"] if math.isfinite(loss) else []) +  # no loss before the first step
                         [f"{k} {v:.4f}" for k, v in metrics.items()])
        logger.info("epoch %d/%d: %s (step %d, %.1f s)", epoch, self.config.epochs, shown or "no training yet",
                    self.state.step, entry["seconds"])
        export.save(self.out / "last.pt")
        if score > self.state.best_score:  # without validation: the lowest-loss epoch
            self.state.best_score, self.state.best_epoch = score, epoch
            export.save(self.out / "best.pt")
        elif not (self.out / "best.pt").is_file():
            export.save(self.out / "best.pt")
        save_checkpoint(
            self.out / "checkpoint.pt", model_state=self.model.state_dict(),
            optimizer_state=self.optimizer.state_dict(), scaler_state=self.scaler.state_dict(),
            state=self.state, config=self.config.to_dict(), fingerprint=self.model.fingerprint,
        )
        write_history(self.state.history, self.out / "history.jsonl")
        plot_history(self.state.history, self.out / "training.png")


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] % (2**63))


def write_history(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """One JSON object per epoch (rewritten whole, so a resumed run stays consistent)."""
    path.write_text("".join(json.dumps(h, sort_keys=True) + "\n" for h in history), encoding="utf-8")
    return path


def train(
    config: TrainConfig, data: TrainingData | None = None, *, resume: bool = False
) -> TrainResult:
    """Build a :class:`Trainer` and run it to ``config.epochs``."""
    return Trainer(config, data, resume=resume).fit()
