"""``imsearch duplicates``: groups of near-duplicate images in the collection.

By default two images are duplicates when they score at least the collection's calibrated
"copy" threshold (``imsearch calibrate``); an uncalibrated collection uses 0.95.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from typing import Any

from indexer.config import add_common

logger = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "duplicates",
        help="near-duplicate groups",
        description=__doc__,
        epilog="example: imsearch duplicates --threshold 0.9 --json > dups.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity to call two images duplicates (default: the calibrated copy threshold, "
                   "else 0.95)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_common(p)
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from indexer.commands.common import open_engine

    engine = open_engine(args)
    try:
        threshold, source = (args.threshold, "given") if args.threshold is not None else engine.duplicate_threshold()
        if source == "default" and engine.calibration is None:
            logger.info("the collection is not calibrated for its model: grouping at similarity >= %s; run "
                        "`imsearch calibrate` to group by its measured copy threshold", threshold)
        elif source == "default":
            logger.info("the calibration found no copy threshold (too few copies scored high enough): grouping at "
                        "similarity >= %s; run `imsearch calibrate` with a larger --sample or --copies", threshold)
        groups = engine.duplicates(threshold)
    finally:
        engine.close()
    if args.json:
        print(json.dumps([asdict(g) for g in groups], indent=2))
        return 0
    why = {"calibration": ", the calibrated copy threshold", "default": ", uncalibrated default"}.get(source, "")
    print(f"{len(groups)} groups of near-duplicates (similarity >= {threshold:.4f}{why})")
    for i, group in enumerate(groups, 1):
        print(f"group {i} ({len(group.image_ids)} images, lowest similarity {group.min_score:.3f}):")
        for image_id, path in zip(group.image_ids, group.paths, strict=True):
            print(f"  {image_id:>20}  {path}")
    return 0
