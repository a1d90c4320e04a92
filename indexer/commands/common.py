"""Helpers shared by the sub-commands: opening the collection and the engine from options."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.errors import ImsearchError

if TYPE_CHECKING:
    from retrieval.models.descriptor import DescriptorModel

logger = logging.getLogger(__name__)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("descriptor model (used when the collection is created)")
    group.add_argument(
        "--model",
        default=None,
        metavar="FILE",
        help="a descriptor model file (from `imsearch train` or DescriptorModel.save). Example: --model runs/best.pt",
    )
    group.add_argument(
        "--backbone",
        default=None,
        help="backbone of a new model: efficientnet_lite0 (default, offline weights), efficientnet_lite1/2, "
        "vgg16, resnet50, resnet101. Example: --backbone vgg16 --weights ~/vgg16-397923af.pth",
    )
    group.add_argument(
        "--weights",
        default="default",
        help="backbone weights: default (offline package or torchvision cache/download), a .pth file, or random",
    )
    group.add_argument("--pooling", default="rmac", choices=["rmac", "gem", "mac", "spoc"], help="(default: rmac)")
    group.add_argument("--max-side", type=int, default=512, help="long side of the network input (default: 512)")
    group.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=None,
        help="image scales whose descriptors are summed (default: 1 0.7071 0.5). Example: --scales 1",
    )


def model_from_args(args: argparse.Namespace) -> DescriptorModel | None:
    """The model the options ask for, or None to use the collection's own (or the default)."""
    from retrieval.models.descriptor import DEFAULT_SCALES, DescriptorModel  # torch: only when a command runs

    if getattr(args, "model", None):
        if getattr(args, "backbone", None):
            raise ImsearchError("give either --model FILE or --backbone NAME, not both")
        return DescriptorModel.load(Path(args.model))
    if getattr(args, "backbone", None):
        return DescriptorModel.create(
            args.backbone,
            weights=args.weights,
            pooling=args.pooling,
            max_side=args.max_side,
            scales=tuple(args.scales) if args.scales else DEFAULT_SCALES,
        )
    return None


def open_engine(args: argparse.Namespace, *, writable: bool = False) -> Any:
    from retrieval.search import SearchEngine

    return SearchEngine.open(args.data_dir, db_url=args.db, writable=writable, device=args.device)
