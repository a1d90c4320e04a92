"""``imsearch stats``: what the collection holds, and with which model and index."""

from __future__ import annotations

import argparse
import json
from typing import Any

from indexer.config import add_common


def register(sub: Any) -> None:
    p = sub.add_parser("stats", help="counts, model and index of the collection", description=__doc__)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--failures", type=int, default=0, metavar="N", help="also list the last N failed files")
    add_common(p)
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from indexer.commands.common import open_engine
    from retrieval.store import catalog

    engine = open_engine(args)
    try:
        stats = engine.stats()
        failures = []
        if args.failures:
            failures = [(f.path, f.reason) for f in engine.collection.read(catalog.list_failures, limit=args.failures)]
    finally:
        engine.close()
    if args.json:
        print(json.dumps({**stats, "failed_files": failures}, indent=2, default=str))
        return 0
    print(f"data dir:  {stats['data_dir']} ({stats['database']} catalog)")
    print(f"model:     {stats['model']}")
    print(f"images:    {stats['images']} ({stats['files']} files, {stats['failures']} failed)")
    print(f"regions:   {stats['regions']}; labelled images: {stats['labels']}")
    for space, info in stats["index"].items():
        print(f"index {space:6s} {info['size']} vectors, {info['kind']} ({info['factory']})")
    for path, reason in failures:
        print(f"  failed: {path}: {reason}")
    return 0
