"""A PNG of the training curves: loss per epoch and the validation metrics per epoch (matplotlib, Agg)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: history key -> legend of the validation curves drawn (those present)
_VALIDATION_CURVES = {
    "val_map": "held-out groups mAP", "val_copy_uap": "copies μAP", "val_copy_r1": "copies R@1",
}


def plot_history(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path | None:
    """Draw loss and validation metrics against the epoch into ``path``; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'imsearch[plot]'); no training plot written")
        return None
    path = Path(path)
    loss = [(h["epoch"], h["loss"]) for h in history if _finite(h.get("loss"))]
    curves = {
        name: [(h["epoch"], h[key]) for h in history if _finite(h.get(key))]
        for key, name in _VALIDATION_CURVES.items()
    }
    curves = {name: points for name, points in curves.items() if points}
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    try:
        if loss:
            ax_loss.plot(*zip(*loss, strict=True), marker="o", color="tab:red")
        ax_loss.set(title="training loss", xlabel="epoch", ylabel="mean batch loss")
        for name, points in curves.items():
            ax_map.plot(*zip(*points, strict=True), marker="o", label=name)
        if curves:
            ax_map.legend(loc="best", fontsize="small")
        else:
            ax_map.text(0.5, 0.5, "no validation data", ha="center", va="center", transform=ax_map.transAxes)
        ax_map.set(title="validation", xlabel="epoch", ylabel="score")
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
