"""A PNG of the training curves: loss per epoch and validation mAP per epoch (matplotlib, Agg)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def plot_history(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path | None:
    """Draw loss and validation mAP against the epoch into ``path``; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'imsearch[plot]'); no training plot written")
        return None
    path = Path(path)
    loss = [(h["epoch"], h["loss"]) for h in history if _finite(h.get("loss"))]
    val = [(h["epoch"], h["val_map"]) for h in history if _finite(h.get("val_map"))]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    try:
        if loss:
            ax_loss.plot(*zip(*loss, strict=True), marker="o", color="tab:red")
        ax_loss.set(title="training loss", xlabel="epoch", ylabel="mean batch loss")
        if val:
            ax_map.plot(*zip(*val, strict=True), marker="o", color="tab:blue")
        else:
            ax_map.text(0.5, 0.5, "no validation data", ha="center", va="center", transform=ax_map.transAxes)
        ax_map.set(title="validation mAP", xlabel="epoch", ylabel="mAP")
        for ax in (ax_loss, ax_map):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
