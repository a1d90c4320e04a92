"""``imsearch reindex``: describe the whole collection again with another model, then swap atomically.

Searches keep working with the old model until the swap. Interrupted (Ctrl-C, crash),
the same command continues from what is already done.
"""

from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType
from typing import Any

from indexer.commands.calibrate import add_calibrate_option, calibrate_after_run
from indexer.commands.common import add_model_options
from indexer.config import add_common
from retrieval.collection_whitening import DEFAULT_SAMPLE as WHITEN_SAMPLE

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  imsearch reindex --model runs/caltech/best.pt          # a model from `imsearch train`
  imsearch reindex --learn-whitening                      # whitening learned from copies of the collection's photos
  imsearch reindex --learn-whitening --whiten-method pca --whiten-dim 512   # PCA-whitening of the collection
  imsearch reindex --learn-whitening --whiten-method pca --whiten-from ~/landmarks-train   # ... of a training set
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
    add_calibrate_option(p)
    white = p.add_argument_group("whitening")
    white.add_argument(
        "--learn-whitening",
        action="store_true",
        help="learn a whitening for the model (the given one, else the collection's) before re-indexing",
    )
    white.add_argument(
        "--whiten-method", choices=("copies", "pca"), default=None,
        help="copies: from seeded edited copies of a sample of the collection's photos (what a new collection "
        "gets; no labels); pca: PCA-whitening of a sample of images (default: copies; pca with --whiten-from or "
        "--whiten-dim)",
    )
    white.add_argument(
        "--whiten-from",
        default=None,
        metavar="DIR",
        help="pca: learn it from these images (default: a sample of the collection itself)",
    )
    white.add_argument("--whiten-dim", type=int, default=None, help="pca: output dimension (default: the backbone's)")
    white.add_argument("--whiten-sample", type=int, default=None,
                       help=f"images sampled from the collection (default: {WHITEN_SAMPLE} for copies, 2000 for pca)")
    add_model_options(p)
    add_common(p)
    p.set_defaults(func=run, _parser=p)


def _whitened(collection: Any, model: Any, args: argparse.Namespace) -> Any:
    """``model`` (or a fresh copy of the collection's) with a whitening learned from images (``--whiten-method``)."""
    import numpy as np

    from retrieval.collection import model_path
    from retrieval.errors import ImsearchError
    from retrieval.ingest.scan import FileEntry, scan
    from retrieval.models.descriptor import DescriptorModel
    from retrieval.models.extract import Extractor
    from retrieval.store import catalog

    base = (
        model if model is not None else DescriptorModel.load(model_path(collection.root, collection.model.fingerprint))
    )
    if base.meta.whitening is not None:
        base.set_whitening(None)
    method = args.whiten_method or ("pca" if args.whiten_from or args.whiten_dim else "copies")
    if method == "copies":
        if args.whiten_from or args.whiten_dim:
            raise ImsearchError("--whiten-from and --whiten-dim go with --whiten-method pca")
        return _copy_whitened(collection, base, args)
    if args.whiten_from:
        sources = [e.path for e in scan([args.whiten_from]) if isinstance(e, FileEntry)]
        origin = f"folder {args.whiten_from}"
    else:
        ids = collection.index_ids("image")
        rng = np.random.default_rng(0)
        sample = args.whiten_sample or 2000
        picked = rng.choice(ids, size=min(sample, len(ids)), replace=False) if len(ids) else ids
        records = collection.read(catalog.get_images, image_ids=picked)
        sources = [r.path for r in records if r is not None and r.path]
        origin = f"{len(sources)} images of the collection"
    if len(sources) < 2:
        raise ImsearchError(f"too few images to learn whitening from ({len(sources)})")
    params = Extractor(base, device=args.device, batch_size=args.batch_size).learn_whitening(sources, args.whiten_dim)
    base.set_whitening(params, learned_from=origin)
    print(f"whitening learned from {origin}: {params.n_samples} vectors, dim {params.weight.shape[0]}")
    return base


def _copy_whitened(collection: Any, base: Any, args: argparse.Namespace) -> Any:
    """``base`` with the whitening learned from copies of a sample of the collection's photos."""
    from pathlib import Path

    import numpy as np

    from retrieval.collection_whitening import learn_collection_whitening
    from retrieval.errors import ImsearchError
    from retrieval.store import catalog

    sample = WHITEN_SAMPLE if args.whiten_sample is None else args.whiten_sample
    if sample < 2:
        raise ImsearchError(f"--whiten-sample must be at least 2 photos, got {sample}")
    ids = collection.index_ids("image")
    rng = np.random.default_rng(0)
    picked = np.sort(rng.choice(ids, size=min(sample, len(ids)), replace=False)) if len(ids) else ids
    records = collection.read(catalog.get_images, image_ids=picked)
    chosen = [Path(r.path) for r in records if r is not None and r.path]
    if not learn_collection_whitening(base, chosen, sample=sample, min_photos=2, batch_size=args.batch_size,
                                      device=args.device):
        raise ImsearchError(f"too few images to learn whitening from ({len(chosen)})")
    print(f"whitening learned from copies of {len(chosen)} photos of the collection: {base.meta.describe()}")
    return base


def run(args: argparse.Namespace) -> int:
    import threading

    from indexer.commands.common import model_from_args
    from retrieval.collection import Collection
    from retrieval.errors import ImsearchError
    from retrieval.ingest import IngestSettings
    from retrieval.progress import Progress
    from retrieval.reindex import reindex

    model = model_from_args(args)
    if model is None and not args.learn_whitening:
        raise ImsearchError(
            "reindex needs the new model: --model FILE, --backbone NAME (with --weights ...), or --learn-whitening"
        )
    collection = Collection.open(args.data_dir, db_url=args.db, create=False)
    if args.learn_whitening:
        try:
            model = _whitened(collection, model, args)
        except BaseException:
            collection.close()
            raise
    assert model is not None
    stop = threading.Event()

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with Progress(desc="reindex", unit="images", logger=logger) as progress:
            settings = IngestSettings(device=args.device, batch_size=args.batch_size)
            report = reindex(
                collection, model, settings=settings, drop_missing=args.drop_missing, stop=stop, progress=progress
            )
    finally:
        signal.signal(signal.SIGINT, previous)
        collection.close()
    if not report.swapped:
        print("the collection already uses this model")
        return 0
    reopened = Collection.open(args.data_dir, db_url=args.db)  # rebuilds the FAISS indexes for the new model
    try:
        n = reopened.count("image")
        calibrate_after_run(reopened, args)  # the old model's calibration does not apply to the new one
    finally:
        reopened.close()
    print(
        f"re-indexed {report.images - report.dropped} images ({report.extracted} extracted now, "
        f"{report.staged_before} before an interruption, {report.dropped} dropped); model: {model.meta.describe()}"
    )
    print(f"index rebuilt: {n} images")
    return 0
