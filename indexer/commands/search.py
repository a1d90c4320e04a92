"""``imsearch search``: query the collection with a photo or an indexed image id."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from indexer.config import add_common
from retrieval.calibrate import LEVELS

logger = logging.getLogger(__name__)

EXAMPLES = """examples:
  imsearch search query.jpg                          # the 10 most similar images
  imsearch search 1234567890 -k 20                   # by indexed image id
  imsearch search query.jpg --label dog --no-label car --min-area 0.2
  imsearch search query.jpg --box 40,30,220,200 --objects   # an object, also inside other photos
  imsearch search query.jpg --aqe 2 --json
  imsearch search query.jpg -k 20 --offset 20              # the second page of 20
  imsearch search query.jpg --min-match near         # only copies and near duplicates (calibrated)
  imsearch search query.jpg --show results.png       # contact sheet of the query and results
"""


def parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        parts = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a box is x0,y0,x1,y1 in pixels, got {text!r}") from None
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"a box is four numbers x0,y0,x1,y1, got {text!r}")
    return parts[0], parts[1], parts[2], parts[3]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "search",
        help="search by example",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("query", metavar="IMAGE|ID", help="an image file, or the id of an indexed image")
    p.add_argument("-k", type=int, default=10, help="number of results (default: %(default)s)")
    p.add_argument("--offset", type=int, default=0, metavar="N",
                   help="skip the first N results: the next page of the same search starts at N = k, 2k ...")
    p.add_argument("--threshold", type=float, default=None, help="only results scoring at least this (cosine)")
    p.add_argument("--min-match", choices=LEVELS, default=None,
                   help="only results of this calibrated match level or stronger (`imsearch calibrate`)")
    p.add_argument("--label", action="append", default=[], help="only images with any of these labels (repeatable)")
    p.add_argument("--all-labels", action="append", default=[], help="only images with all of these labels")
    p.add_argument("--no-label", action="append", default=[], help="no image with this label (repeatable)")
    p.add_argument("--min-score", type=float, default=0.0, help="label confidence at least this (default: 0)")
    p.add_argument("--min-area", type=float, default=0.0, help="labelled area at least this fraction (e.g. 0.2)")
    p.add_argument("--path-prefix", default=None, help="only images under this path")
    p.add_argument("--box", type=parse_box, default=None, metavar="X0,Y0,X1,Y1", help="search with this region")
    p.add_argument("--objects", action="store_true", help="also match detected objects inside indexed images")
    p.add_argument("--aqe", type=int, default=0, metavar="N", help="alpha query expansion with the top N (0: off)")
    p.add_argument("--dba", type=int, default=0, metavar="N", help="database-side augmentation with N neighbours")
    p.add_argument(
        "--no-fast-query", dest="fast_query", action="store_false",
        help="always run the torch model (default: plain queries run the collection's model exported to ONNX, "
        "without importing torch; env IMSEARCH_FAST_QUERY=0)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--show", default=None, metavar="OUT.png", help="write a contact sheet of the query and results")
    add_common(p)
    p.set_defaults(func=run, _parser=p)


def _query(args: argparse.Namespace) -> Path | int:
    query_path = Path(args.query)
    if query_path.is_file():
        return query_path
    if args.query.lstrip("-").isdigit():
        return int(args.query)
    from retrieval.errors import ImsearchError

    raise ImsearchError(f"{args.query} is neither an image file nor an indexed image id")


def _needs_torch(args: argparse.Namespace) -> str | None:
    """Why this query must take the torch path (None: the quick path may serve it)."""
    reasons = [
        ("--no-fast-query / IMSEARCH_FAST_QUERY=0", not args.fast_query),
        ("--box", args.box is not None),
        ("--objects", args.objects),
        ("re-ranking (--aqe/--dba)", bool(args.aqe or args.dba)),
        ("--show", bool(args.show)),
        ("--device other than cpu/auto", args.device not in ("auto", "cpu")),
    ]
    given = [name for name, present in reasons if present]
    return ", ".join(given) if given else None


def _filter(args: argparse.Namespace) -> Any:
    from retrieval.filters import SearchFilter

    return SearchFilter(
        labels_any=tuple(args.label),
        labels_all=tuple(args.all_labels),
        labels_none=tuple(args.no_label),
        min_score=args.min_score,
        min_area=args.min_area,
        path_prefix=args.path_prefix,
    )


def _quick(args: argparse.Namespace, query: Path | int) -> Any:
    """The result of the torch-free path, or None (logged) when it cannot serve this query."""
    from retrieval.quick import QuickUnavailableError

    why = _needs_torch(args)
    if why is not None:
        logger.debug("fast query path not used: %s needs the torch path", why)
        return None
    try:
        from retrieval.quick.search import QuickSearch

        with QuickSearch.open(args.data_dir, db_url=args.db) as quick:
            return quick.search(query, k=args.k, offset=args.offset, threshold=args.threshold, flt=_filter(args),
                                min_match=args.min_match)
    except QuickUnavailableError as exc:
        logger.info("fast query path unavailable (%s); using the torch path", exc)
        return None


def _export(collection: Any) -> None:
    """After a torch search: export the collection's model so that the next plain search skips torch."""
    from retrieval.errors import ImsearchError
    from retrieval.quick import QuickUnavailableError
    from retrieval.quick.export import export_quick_model, quick_model_ready
    from retrieval.quick.model import export_failure

    root, fingerprint = collection.root, collection.model.fingerprint
    if quick_model_ready(root, fingerprint) or export_failure(root, fingerprint) is not None:
        return
    try:
        export_quick_model(root, collection.model)
    except QuickUnavailableError as exc:
        logger.info("the model cannot run without torch (%s); searches keep using torch", exc)
    except (ImsearchError, OSError) as exc:
        logger.warning("could not export the model for fast queries (%s); searches keep using torch", exc)


def run(args: argparse.Namespace) -> int:
    query = _query(args)
    result = _quick(args, query)
    if result is not None:
        _print(args, result)
        return 0
    from indexer.commands.common import open_engine
    from retrieval.rerank import RerankOptions
    from retrieval.search import Query

    q = Query(image=query, box=args.box) if isinstance(query, Path) else Query(image_id=query, box=args.box)
    flt = _filter(args)
    engine = open_engine(args)
    try:
        result = engine.search(
            q,
            k=args.k,
            offset=args.offset,
            threshold=args.threshold,
            flt=flt,
            rerank=RerankOptions(aqe_n=args.aqe, dba_n=args.dba),
            objects=args.objects,
            min_match=args.min_match,
        )
        if args.show:
            from indexer.contact_sheet import contact_sheet

            source = q.image if q.image is not None else engine.image_file(int(args.query))
            out = contact_sheet(source, result.query_box, result.hits, args.show)
            print(f"contact sheet: {out}")
        _print(args, result)
        if args.fast_query:
            _export(engine.collection)
    finally:
        engine.close()
    return 0


def _print(args: argparse.Namespace, result: Any) -> None:
    if args.json:
        body = {
            "took_ms": round(result.took_ms, 2),
            "offset": result.offset,
            "next_offset": result.next_offset,
            "hits": [asdict(h) for h in result.hits],
        }
        print(json.dumps(body, indent=2), flush=True)
        return
    more = f"; next page: --offset {result.next_offset}" if result.next_offset is not None else ""
    print(f"{len(result.hits)} results in {result.took_ms:.0f} ms{more}")
    print(f"{'rank':>4}  {'score':>6}  {'match':7}  {'id':>20}  {'labels':24}  path")
    for rank, hit in enumerate(result.hits, result.offset + 1):
        labels = ",".join(sorted({lab.label for lab in hit.labels}))[:24]
        extra = f"  [box {', '.join(f'{v:.0f}' for v in hit.box)}]" if hit.box else ""
        match = hit.match or "-"
        print(f"{rank:>4}  {hit.score:6.3f}  {match:7}  {hit.image_id:>20}  {labels:24}  {hit.path}{extra}")
    sys.stdout.flush()
