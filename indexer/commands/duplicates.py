"""``imsearch duplicates``: groups of near-duplicate images in the collection."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from indexer.config import add_common


def register(sub: Any) -> None:
    p = sub.add_parser(
        "duplicates",
        help="near-duplicate groups",
        description=__doc__,
        epilog="example: imsearch duplicates --threshold 0.9 --json > dups.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--threshold", type=float, default=0.95, help="cosine similarity to call two images duplicates")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_common(p)
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from indexer.commands.common import open_engine

    engine = open_engine(args)
    try:
        groups = engine.duplicates(args.threshold)
    finally:
        engine.close()
    if args.json:
        print(json.dumps([asdict(g) for g in groups], indent=2))
        return 0
    print(f"{len(groups)} groups of near-duplicates (similarity >= {args.threshold})")
    for i, group in enumerate(groups, 1):
        print(f"group {i} ({len(group.image_ids)} images, lowest similarity {group.min_score:.3f}):")
        for image_id, path in zip(group.image_ids, group.paths, strict=True):
            print(f"  {image_id:>20}  {path}")
    return 0
