"""``imsearch calibrate``: learn what a score means in this collection (match levels copy / near / similar).

Seeded edited copies of a sample of the collection's own photos are described with its model
and searched against it; the thresholds at which a match is a copy (precision >= 0.99),
a near duplicate (>= 0.9) or similar are stored beside the model (see retrieval.calibrate).
``imsearch index`` and ``imsearch reindex`` run it at their end when the collection has no
calibration for its model (from 50 photos on); run it yourself after large changes.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from indexer.config import add_common
from retrieval.calibrate import COPY_PRECISION, DEFAULT_COPIES, DEFAULT_SAMPLE, DEFAULT_SEED, MIN_PHOTOS

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  imsearch calibrate                         # 300 photos x 4 edited copies, seed 0
  imsearch calibrate --sample 500 --copies 6 --seed 1
  imsearch calibrate --show --json           # the stored calibration, nothing measured
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate",
        help="calibrate match levels (copy / near / similar) on edited copies of the collection's photos",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, help="photos sampled (default: %(default)s)")
    p.add_argument("--copies", type=int, default=DEFAULT_COPIES, help="edited copies of each (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help="seed of the sample and of the edits (default: %(default)s)")
    p.add_argument("--min-photos", type=int, default=MIN_PHOTOS,
                   help="refuse a collection with fewer images (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="images per model batch (default: %(default)s)")
    p.add_argument("--show", action="store_true", help="print the stored calibration; measure nothing")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_common(p)
    p.set_defaults(func=run, _parser=p)


def add_calibrate_option(parser: argparse.ArgumentParser) -> None:
    """``--no-calibrate`` of the commands that calibrate at their end (index, reindex)."""
    parser.add_argument(
        "--no-calibrate", dest="calibrate", action="store_false",
        help=f"do not calibrate match levels at the end (default: calibrate when the collection has none for its "
        f"model and at least {MIN_PHOTOS} images)",
    )


def calibrate_after_run(collection: Any, args: argparse.Namespace) -> None:
    """The end-of-run hook of index / reindex (see :func:`retrieval.calibrate_collection.ensure_calibrated`)."""
    if not getattr(args, "calibrate", True):
        return
    from retrieval.calibrate_collection import ensure_calibrated
    from retrieval.errors import ImsearchError
    from retrieval.ingest import IngestSettings

    try:
        ensure_calibrated(collection, settings=IngestSettings(device=args.device, batch_size=args.batch_size))
    except ImsearchError as exc:
        logger.warning("match levels not calibrated: %s (run `imsearch calibrate` to try again)", exc)


def _stored(collection: Any) -> Any:
    from retrieval.calibrate import load_calibration, stale_calibrations
    from retrieval.errors import ImsearchError

    fingerprint = collection.model.fingerprint
    cal = load_calibration(collection.root, fingerprint)
    if cal is None:
        stale = stale_calibrations(collection.root, fingerprint)
        why = f" (only for earlier models: {', '.join(p.name for p in stale)})" if stale else ""
        raise ImsearchError(f"the collection at {collection.root} has no calibration for its model{why}; "
                            "run `imsearch calibrate`")
    return cal


def run(args: argparse.Namespace) -> int:
    from retrieval.calibrate import describe
    from retrieval.calibrate_collection import calibrate_collection
    from retrieval.collection import Collection
    from retrieval.errors import ImsearchError
    from retrieval.ingest import IngestSettings
    from retrieval.progress import Progress

    collection = Collection.open(args.data_dir, db_url=args.db, writable=False, create=False)
    try:
        if args.show:
            cal = _stored(collection)
        else:
            images = collection.count("image")
            if images < args.min_photos:
                raise ImsearchError(
                    f"the collection has {images} images, fewer than --min-photos {args.min_photos}: thresholds "
                    "from so few photos mean little; index more photos, or pass a smaller --min-photos"
                )
            settings = IngestSettings(device=args.device, batch_size=args.batch_size)
            with Progress(min(args.sample, images), desc="calibrate", unit="photos", logger=logger) as progress:
                cal = calibrate_collection(collection, sample=args.sample, copies_per_photo=args.copies,
                                           seed=args.seed, settings=settings, progress=progress)
    finally:
        collection.close()
    if args.json:
        print(json.dumps(cal.to_dict(), indent=2, sort_keys=True))
        return 0
    for line in describe(cal):
        print(line)
    if cal.copy is None:
        print(f"no copy threshold: too few copies reached precision {COPY_PRECISION:g}; "
              "calibrate with a larger --sample or --copies")
    return 0
