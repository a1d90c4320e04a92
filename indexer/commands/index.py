"""``imsearch index``: bulk-index folders of photos (resumable, idempotent)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from indexer.commands.common import add_model_options, model_from_args
from indexer.config import add_common

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  imsearch index ~/Photos                       # index (or update) a collection
  imsearch index ~/Photos --detect --segment    # also detect objects: label filters, object search
  imsearch index ~/Photos --prune               # also forget files deleted from disk
  imsearch index ../shared/data --data-dir /tmp/idx --db postgresql://me@localhost/imsearch

Re-running is cheap: unchanged files are skipped, changed ones re-indexed. A run that is
killed (even with SIGKILL) continues where it stopped when started again; Ctrl-C stops
cleanly after the work in flight is written.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "index",
        help="index folders of photos",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="folders (walked recursively) or image files")
    p.add_argument("--detect", action="store_true", help="run the object detector: labels, boxes, region descriptors")
    p.add_argument("--segment", action="store_true", help="run the segmenter: per-class area fractions")
    p.add_argument("--detector", default="yolox_nano", help="detector name (default: %(default)s; see MODELS.md)")
    p.add_argument("--segmenter", default="deeplabv3_mobilenetv2_voc", help="segmenter name (default: %(default)s)")
    p.add_argument("--model-dir", default=None, help="folder of detector/segmenter files (env IMSEARCH_MODEL_DIR)")
    p.add_argument("--region-min-score", type=float, default=0.5, help="objects this sure get a region descriptor")
    p.add_argument("--prune", action="store_true", help="forget indexed files under PATH that were deleted")
    p.add_argument("--retry-failed", action="store_true", help="retry files that failed before (even unchanged)")
    p.add_argument("--follow-symlinks", action="store_true", help="follow symbolic links (default: skip them)")
    p.add_argument("--include-hidden", action="store_true", help="also index hidden files and folders")
    p.add_argument("--batch-size", type=int, default=16, help="images per model batch (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="decode threads (default: min(4, CPUs))")
    p.add_argument("--commit-every", type=int, default=64, help="images per catalog transaction (default: %(default)s)")
    p.add_argument("--index-kind", default="auto", help="auto, flat, hnsw, ivf, ivfsq, ivfpq or a FAISS factory string")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_options(p)
    add_common(p)
    p.set_defaults(func=run, _parser=p)


def _vision_options(name: str, args: argparse.Namespace) -> dict[str, Any]:
    if name.startswith("tv:"):  # torchvision back ends: weights from torchvision's cache
        return {"device": args.device}
    # ONNX files run inside the decode workers, beside the backbone: one thread each
    return {"model_dir": args.model_dir, "threads": 1}


def run(args: argparse.Namespace) -> int:
    from indexer.pipeline import Indexer, IndexOptions
    from retrieval.collection import Collection
    from retrieval.errors import ImsearchError
    from retrieval.models.extract import Extractor

    for path in args.paths:
        if not Path(path).exists():
            raise ImsearchError(f"{path} does not exist")
    collection = Collection.open(args.data_dir, db_url=args.db, model=model_from_args(args), index_kind=args.index_kind)
    try:
        detector = segmenter = None
        if args.detect or args.segment:
            from retrieval.vision import create_detector, create_segmenter

            if args.detect:
                detector = create_detector(args.detector, **_vision_options(args.detector, args))
            if args.segment:
                segmenter = create_segmenter(args.segmenter, **_vision_options(args.segmenter, args))
        extractor = Extractor(collection.model, device=args.device, batch_size=args.batch_size, workers=args.workers)
        options = IndexOptions(
            prune=args.prune,
            retry_failed=args.retry_failed,
            follow_symlinks=args.follow_symlinks,
            include_hidden=args.include_hidden,
            region_min_score=args.region_min_score,
            commit_every=max(1, args.commit_every),
            progress=not args.no_progress and sys.stderr.isatty(),
        )
        indexer = Indexer(collection, extractor, detector=detector, segmenter=segmenter, options=options)
        previous = signal.getsignal(signal.SIGINT)

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            logger.warning("stopping after the work in flight (Ctrl-C again to abort)")
            indexer.stop()
            signal.signal(signal.SIGINT, signal.default_int_handler)

        signal.signal(signal.SIGINT, on_sigint)
        try:
            summary = indexer.run(args.paths)
        finally:
            signal.signal(signal.SIGINT, previous)
        for line in summary.lines():
            print(line)
        print(f"collection: {collection.root} ({collection.count('image')} images)")
        return 130 if summary.interrupted else 0
    finally:
        collection.close()
