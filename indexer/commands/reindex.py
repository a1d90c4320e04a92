"""``imsearch reindex``: describe the whole collection again with another model, then swap atomically.

Searches keep working with the old model until the swap. Interrupted (Ctrl-C, crash),
the same command continues from what is already done.
"""

from __future__ import annotations

import argparse
import signal
from types import FrameType
from typing import Any

from indexer.commands.common import add_model_options
from indexer.config import add_common

EXAMPLES = """examples:
  imsearch reindex --model runs/caltech/best.pt          # a model from `imsearch train`
  imsearch reindex --backbone efficientnet_lite2 --max-side 640
  imsearch reindex --model best.pt --drop-missing         # forget images whose files are gone
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "reindex",
        help="re-extract every image with another model and swap it in",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--drop-missing", action="store_true", help="remove images whose file can no longer be read")
    p.add_argument("--batch-size", type=int, default=16, help="images per model batch (default: %(default)s)")
    add_model_options(p)
    add_common(p)
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    import threading

    from tqdm import tqdm

    from indexer.commands.common import model_from_args
    from retrieval.collection import Collection
    from retrieval.errors import ImsearchError
    from retrieval.models.extract import Extractor
    from retrieval.reindex import reindex

    model = model_from_args(args)
    if model is None:
        raise ImsearchError("reindex needs the new model: --model FILE, or --backbone NAME (with --weights ...)")
    collection = Collection.open(args.data_dir, db_url=args.db, create=False)
    stop = threading.Event()

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    bar = tqdm(total=0, unit="img", desc="reindex")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        extractor = Extractor(model, device=args.device, batch_size=args.batch_size)
        report = reindex(
            collection, model, extractor=extractor, drop_missing=args.drop_missing, stop=stop, progress=progress
        )
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous)
        collection.close()
    if not report.swapped:
        print("the collection already uses this model")
        return 0
    reopened = Collection.open(args.data_dir, db_url=args.db)  # rebuilds the FAISS indexes for the new model
    try:
        n = len(reopened.indexes["image"])
    finally:
        reopened.close()
    print(
        f"re-indexed {report.images - report.dropped} images ({report.extracted} extracted now, "
        f"{report.staged_before} before an interruption, {report.dropped} dropped); model: {model.meta.describe()}"
    )
    print(f"index rebuilt: {n} images")
    return 0
