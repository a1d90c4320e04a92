"""``imsearch search``: query the collection with a photo or an indexed image id."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from indexer.config import add_common

EXAMPLES = """examples:
  imsearch search query.jpg                          # the 10 most similar images
  imsearch search 1234567890 -k 20                   # by indexed image id
  imsearch search query.jpg --label dog --no-label car --min-area 0.2
  imsearch search query.jpg --box 40,30,220,200 --objects   # an object, also inside other photos
  imsearch search query.jpg --aqe 2 --json
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
    p.add_argument("--threshold", type=float, default=None, help="only results scoring at least this (cosine)")
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
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--show", default=None, metavar="OUT.png", help="write a contact sheet of the query and results")
    add_common(p)
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from indexer.commands.common import open_engine
    from indexer.contact_sheet import contact_sheet
    from retrieval.filters import SearchFilter
    from retrieval.rerank import RerankOptions
    from retrieval.search import Query

    query_path = Path(args.query)
    if query_path.is_file():
        query = Query(image=query_path, box=args.box)
    elif args.query.lstrip("-").isdigit():
        query = Query(image_id=int(args.query), box=args.box)
    else:
        from retrieval.errors import ImsearchError

        raise ImsearchError(f"{args.query} is neither an image file nor an indexed image id")
    flt = SearchFilter(
        labels_any=tuple(args.label),
        labels_all=tuple(args.all_labels),
        labels_none=tuple(args.no_label),
        min_score=args.min_score,
        min_area=args.min_area,
        path_prefix=args.path_prefix,
    )
    engine = open_engine(args)
    try:
        result = engine.search(
            query,
            k=args.k,
            threshold=args.threshold,
            flt=flt,
            rerank=RerankOptions(aqe_n=args.aqe, dba_n=args.dba),
            objects=args.objects,
        )
        if args.show:
            source = query.image if query.image is not None else engine.image_file(int(args.query))
            out = contact_sheet(source, result.query_box, result.hits, args.show)
            print(f"contact sheet: {out}")
    finally:
        engine.close()
    if args.json:
        print(json.dumps({"took_ms": round(result.took_ms, 2), "hits": [asdict(h) for h in result.hits]}, indent=2))
        return 0
    print(f"{len(result.hits)} results in {result.took_ms:.0f} ms")
    print(f"{'rank':>4}  {'score':>6}  {'id':>20}  {'labels':24}  path")
    for rank, hit in enumerate(result.hits, 1):
        labels = ",".join(sorted({lab.label for lab in hit.labels}))[:24]
        extra = f"  [box {', '.join(f'{v:.0f}' for v in hit.box)}]" if hit.box else ""
        print(f"{rank:>4}  {hit.score:6.3f}  {hit.image_id:>20}  {labels:24}  {hit.path}{extra}")
    return 0
