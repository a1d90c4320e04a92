"""``imsearch eval``: mAP / mP@k of a descriptor model on labelled data.

Two kinds of ground truth:
  * a folder per class (``ROOT/<class>/<image>``): every image is a query against all
    others plus the distractor folders; images of the same class are relevant;
  * the Revisited Oxford/Paris protocol: ``--gnd gnd_roxford5k.pkl --images DIR`` (the
    dataset's ``jpg`` folder); queries cropped to their box; Easy / Medium / Hard.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from indexer.commands.common import add_model_options
from indexer.config import add_common

EXAMPLES = """examples:
  imsearch eval ../shared/data/caltech101-half --distractors ../shared/data/caltech101-distractors
  imsearch eval --gnd roxford5k/gnd_roxford5k.pkl --images roxford5k/jpg --backbone vgg16 --max-side 1024
  imsearch eval ~/labelled --model runs/best.pt --json
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate retrieval quality (mAP, mP@k)",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("folder", nargs="?", default=None, help="folder-per-class ground truth")
    p.add_argument("--distractors", action="append", default=[], metavar="DIR", help="folders of distractors")
    p.add_argument("--gnd", default=None, metavar="PKL", help="Revisited Oxford/Paris ground truth file")
    p.add_argument("--images", default=None, metavar="DIR", help="image folder of the --gnd dataset")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", action="store_true", help="print JSON")
    add_model_options(p)
    add_common(p)
    p.set_defaults(func=run, _parser=p)


def _model(args: argparse.Namespace) -> Any:
    from indexer.commands.common import model_from_args
    from retrieval.collection import Collection
    from retrieval.models.descriptor import DescriptorModel

    model = model_from_args(args)
    if model is not None:
        return model
    if (Path(args.data_dir) / "models").is_dir():
        collection = Collection.open(args.data_dir, db_url=args.db, writable=False, create=False)
        try:
            return collection.model
        finally:
            collection.close()
    return DescriptorModel.create()


def run(args: argparse.Namespace) -> int:
    from retrieval.errors import ImsearchError
    from retrieval.models.extract import Extractor

    if (args.folder is None) == (args.gnd is None):
        raise ImsearchError("give a class FOLDER, or --gnd FILE with --images DIR")
    model = _model(args)
    extractor = Extractor(model, device=args.device, batch_size=args.batch_size)
    results = _folder(args, extractor) if args.folder else _revisited(args, extractor)
    if args.json:
        out = {name: {"map": r.map, "mp_at_k": r.mp_at_k, "queries": r.n_queries} for name, r in results.items()}
        print(json.dumps({"model": model.meta.describe(), "results": out}, indent=2))
        return 0
    print(f"model: {model.meta.describe()}")
    for name, res in results.items():
        print(f"{name:8s} {res.summary()}")
    return 0


def _folder(args: argparse.Namespace, extractor: Any) -> dict[str, Any]:
    from retrieval.evaluate import describe_all, evaluate_descriptors, folder_dataset

    data = folder_dataset(args.folder, distractor_dirs=args.distractors)
    vectors = describe_all(extractor, list(data.paths), desc="eval: describing")
    return {"classes": evaluate_descriptors(vectors, data.labels, ks=(1, 5, 10))}


def _revisited(args: argparse.Namespace, extractor: Any) -> dict[str, Any]:
    import numpy as np

    from retrieval.errors import ImsearchError
    from retrieval.evaluate import describe_all, evaluate_revisited, load_revisited_gnd, rank_by_similarity
    from retrieval.imageio import decode_image

    if not args.images:
        raise ImsearchError("--gnd needs --images DIR (the folder holding the dataset's jpg files)")
    gnd = load_revisited_gnd(args.gnd)
    folder = Path(args.images)
    db = describe_all(extractor, [folder / f"{name}.jpg" for name in gnd.imlist], desc="eval: database")
    crops = []
    for name, query in zip(gnd.qimlist, gnd.queries, strict=True):
        pixels = decode_image(folder / f"{name}.jpg").pixels
        if query.bbx is not None:
            x0, y0, x1, y1 = (round(v) for v in query.bbx)
            pixels = pixels[y0:y1, x0:x1]
        crops.append(np.ascontiguousarray(pixels))
    queries = describe_all(extractor, crops, desc="eval: queries")
    return evaluate_revisited(rank_by_similarity(queries, db), gnd)
