"""``imsearch labels``: the labels found by detection/segmentation, with image counts."""

from __future__ import annotations

import argparse
import json
from typing import Any

from indexer.config import add_common


def register(sub: Any) -> None:
    p = sub.add_parser("labels", help="labels with the number of images having each", description=__doc__)
    p.add_argument("--min-score", type=float, default=0.0, help="count a label only at this confidence or more")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_common(p)
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from indexer.commands.common import open_engine

    engine = open_engine(args)
    try:
        counts = engine.labels(min_score=args.min_score)
    finally:
        engine.close()
    if args.json:
        print(json.dumps([{"label": lab, "images": n} for lab, n in counts], indent=2))
    else:
        for lab, n in counts:
            print(f"{n:8d}  {lab}")
    return 0
