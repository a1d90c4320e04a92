"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint (``checkpoint.pt``, written atomically at the end of every epoch) holds the
model's weights, the optimizer (and gradient-scaler) state, the epoch and optimizer-step
counters, the history, the best validation score so far, the resolved configuration and
the random-number generator states (Python, NumPy, torch CPU and CUDA). The model
*structure* comes from ``last.pt`` (a :class:`DescriptorModel` artifact written with it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrieval.errors import TrainingError
from retrieval.models.descriptor import save_atomic

CHECKPOINT_FORMAT = "imsearch-train-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class TrainState:
    """The counters and records of a run (what is not in the model or optimizer)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_score: float = float("-inf")
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def rng_state() -> dict[str, Any]:
    """The global generators' states (Python, NumPy, torch CPU, CUDA when present)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    keys_t = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    state: dict[str, Any] = {  # plain types and tensors only, so the file loads with weights_only=True
        "python": random.getstate(),
        "numpy": [str(name), keys_t, int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: Path,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scaler_state: dict[str, Any] | None,
    state: TrainState,
    config: dict[str, Any],
    fingerprint: str,
) -> Path:
    """Write a checkpoint atomically (temp file + rename)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": {k: v.detach().cpu() for k, v in model_state.items()},
        "fingerprint": fingerprint,
        "optimizer": optimizer_state,
        "scaler": scaler_state,
        "epoch": state.epoch,
        "step": state.step,
        "best_score": state.best_score,
        "best_epoch": state.best_epoch,
        "history": state.history,
        "config": config,
        "rng": rng_state(),
    }
    return save_atomic(payload, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (validated)."""
    if not path.is_file():
        raise TrainingError(f"no checkpoint at {path}: nothing to resume (start without --resume)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"{path} is not a readable training checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not an imsearch training checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise TrainingError(f"{path} has checkpoint version {payload.get('version')!r}; expected {CHECKPOINT_VERSION}")
    return payload


def state_from_payload(payload: dict[str, Any]) -> TrainState:
    return TrainState(
        epoch=int(payload["epoch"]),
        step=int(payload["step"]),
        best_score=float(payload["best_score"]),
        best_epoch=int(payload["best_epoch"]),
        history=list(payload["history"]),
    )
