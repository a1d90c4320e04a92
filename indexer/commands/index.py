"""``imsearch index``: bulk-index folders of photos (resumable, idempotent)."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from indexer.commands.calibrate import add_calibrate_option, calibrate_after_run
from indexer.commands.common import add_model_options, model_from_args
from indexer.config import add_common
from retrieval.collection_whitening import DEFAULT_METHOD as DEFAULT_WHITENING
from retrieval.collection_whitening import DEFAULT_SAMPLE as WHITEN_SAMPLE
from retrieval.collection_whitening import MIN_PHOTOS as WHITEN_MIN
from retrieval.collection_whitening import WHITENING_METHODS
from retrieval.ingest.settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DETECTOR,
    DEFAULT_REGION_MIN_SCORE,
    DEFAULT_SEGMENTER,
)

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  imsearch index ~/Photos                       # index (or update) a collection
  imsearch index ~/Photos --detect --segment    # also detect objects: label filters, object search
  imsearch index ~/Photos --prune               # also forget files deleted from disk
  imsearch index ~/Photos --whitening none      # a new collection's model without learned whitening
  imsearch index ../shared/data --data-dir /tmp/idx --db postgresql://me@localhost/imsearch
  imsearch index /mnt/photos --engine ray --workers 8 --gpus-per-worker 0.5 --ray-address auto
  imsearch index --manifest paths.parquet --engine ray --workers 4

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
    p.add_argument("paths", nargs="*", metavar="PATH", help="folders (walked recursively) or image files")
    p.add_argument("--detect", action="store_true", help="run the object detector: labels, boxes, region descriptors")
    p.add_argument("--segment", action="store_true", help="run the segmenter: per-class area fractions")
    p.add_argument("--detector", default=DEFAULT_DETECTOR, help="detector name (default: %(default)s; see MODELS.md)")
    p.add_argument("--segmenter", default=DEFAULT_SEGMENTER, help="segmenter name (default: %(default)s)")
    p.add_argument("--model-dir", default=None, help="folder of detector/segmenter files (env IMSEARCH_MODEL_DIR)")
    p.add_argument("--region-min-score", type=float, default=DEFAULT_REGION_MIN_SCORE,
                   help="objects this sure get a region descriptor (default: %(default)s)")
    p.add_argument("--prune", action="store_true", help="forget indexed files under PATH that were deleted")
    p.add_argument("--retry-failed", action="store_true", help="retry files that failed before (even unchanged)")
    p.add_argument("--follow-symlinks", action="store_true", help="follow symbolic links (default: skip them)")
    p.add_argument("--include-hidden", action="store_true", help="also index hidden files and folders")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="images per model batch (default: %(default)s)")
    p.add_argument("--decode-threads", type=int, default=None, help="decode threads per model (default: min(4, CPUs))")
    p.add_argument("--commit-every", type=int, default=64, help="images per catalog transaction (default: %(default)s)")
    p.add_argument("--index-kind", default="auto", help="auto, flat, hnsw, ivf, ivfsq, ivfpq or a FAISS factory string")
    p.add_argument("--shards", type=int, default=None,
                   help="split a new collection's vector index into N shards (default: what exists, else 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    add_calibrate_option(p)
    white = p.add_argument_group("whitening of a new collection's model")
    white.add_argument(
        "--whitening", choices=WHITENING_METHODS, default=DEFAULT_WHITENING,
        help="copies: a new collection learns its model's whitening from seeded edited copies of a sample of the "
        f"photos found, before indexing (from {WHITEN_MIN} photos on); none: the model as it is. A --model FILE "
        "and an existing collection's model are used as they are (default: %(default)s)",
    )
    white.add_argument("--whiten-sample", type=int, default=WHITEN_SAMPLE,
                       help="photos the whitening is learned from (default: %(default)s)")
    white.add_argument("--whiten-min", type=int, default=WHITEN_MIN,
                       help="fewer photos found: no whitening (default: %(default)s)")
    ray = p.add_argument_group("more than one machine (the [ray] extra)")
    ray.add_argument("--engine", choices=["local", "ray"], default="local",
                     help="local: threads on this machine (default); ray: Ray Data actors, one model each")
    ray.add_argument("--ray-address", default=None,
                     help="Ray cluster to join (e.g. ray://head:10001 or auto); default: start a local instance")
    ray.add_argument("--workers", type=int, default=1, help="Ray workers (actors), one model each (default: 1)")
    ray.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray worker (default: 0, CPU)")
    ray.add_argument("--manifest", default=None, metavar="FILE",
                     help="a CSV (path column, or one path a line) or Parquet file of image paths (besides PATHs)")
    add_model_options(p)
    add_common(p)
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from retrieval.collection import Collection
    from retrieval.errors import ImsearchError
    from retrieval.ingest import Describer, IndexOptions, IngestSettings, LocalIngest

    if not args.paths and not args.manifest:
        raise ImsearchError("give the folders or files to index (PATH...), or --manifest FILE")
    for path in args.paths:
        if not Path(path).exists():
            raise ImsearchError(f"{path} does not exist")
    settings = IngestSettings(
        detect=args.detect,
        segment=args.segment,
        detector=args.detector,
        segmenter=args.segmenter,
        model_dir=args.model_dir,
        region_min_score=args.region_min_score,
        follow_symlinks=args.follow_symlinks,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.decode_threads,
    )
    options = IndexOptions(
        prune=args.prune,
        retry_failed=args.retry_failed,
        include_hidden=args.include_hidden,
        commit_every=max(1, args.commit_every),
        progress=not args.no_progress,
    )
    runner: Any
    if args.engine == "ray":
        from retrieval.ingest.ray_runner import RayIngest, connect

        connect(args.ray_address)
    collection = Collection.open(
        args.data_dir, db_url=args.db, model=_model_arg(args), index_kind=args.index_kind, shards=args.shards
    )
    try:
        if args.engine == "ray":
            runner = RayIngest(collection, settings, options, workers=args.workers,
                               gpus_per_worker=args.gpus_per_worker, batch_size=args.batch_size)
        else:
            runner = LocalIngest(collection, Describer(settings, model=collection.model), options)
        previous = signal.getsignal(signal.SIGINT)

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            logger.warning("stopping after the work in flight (Ctrl-C again to abort)")
            runner.stop()
            signal.signal(signal.SIGINT, signal.default_int_handler)

        signal.signal(signal.SIGINT, on_sigint)
        try:
            summary = runner.run(args.paths, manifest=args.manifest)
        finally:
            signal.signal(signal.SIGINT, previous)
        for line in summary.lines():
            print(line)
        print(f"collection: {collection.root} ({collection.count('image')} images)")
        if not summary.interrupted:
            calibrate_after_run(collection, args)
        _export_quick_model(collection)
        return 130 if summary.interrupted else 0
    finally:
        collection.close()


def _model_arg(args: argparse.Namespace) -> Any:
    """The model a new collection gets: the options' (or the default) with its whitening learned
    from copies of the photos found (``--whitening copies``), else as given."""
    from retrieval.errors import ImsearchError

    if args.whiten_sample < 2:
        raise ImsearchError(f"--whiten-sample must be at least 2 photos, got {args.whiten_sample}")
    model = model_from_args(args)
    if args.whitening == "none" or args.model:
        return model
    from retrieval.collection_whitening import WhitenOnCreation
    from retrieval.ingest.scan import FileEntry, read_manifest, scan

    def found() -> list[Path]:
        roots = [*args.paths, *(read_manifest(args.manifest) if args.manifest else [])]
        entries = scan(roots, follow_symlinks=args.follow_symlinks, include_hidden=args.include_hidden)
        return [Path(e.path) for e in entries if isinstance(e, FileEntry)]

    return WhitenOnCreation(
        found, base=model, sample=args.whiten_sample, min_photos=args.whiten_min, batch_size=args.batch_size,
        device=args.device, progress="log" if args.no_progress else "auto",
    )


def _export_quick_model(collection: Any) -> None:
    """Ready the collection's model for ``imsearch search``'s torch-free path (once per model)."""
    from retrieval.quick import QuickUnavailableError
    from retrieval.quick.export import export_quick_model

    try:
        export_quick_model(collection.root, collection.model)
    except QuickUnavailableError as exc:
        logger.info("imsearch search will use torch for this collection: %s", exc)
