"""Object search and the cost of detection at index time, on real photos.

1. Objects: the detector's most confident box in N caltech101-half photos is cropped and
   pasted (35-50 % of the long side, random place) into a distractor photo (the "host").
   The hosts and M other photos are indexed with `--detect` (one region descriptor per
   detected object). Each crop is then the query: recall@10 of its host with global
   descriptors only, and with object search (regions too), through the real engine.
2. Indexing cost: the same photos indexed plain, with --detect, and with --detect --segment
   (images/s of each, in the same run).

    python -m bench.objects                 # 100 objects, 500 other photos
    python -m bench.objects --objects 40 --others 200
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.collection import Collection
from retrieval.ingest import IndexOptions, IngestSettings, LocalIngest
from retrieval.models.descriptor import DescriptorModel
from retrieval.models.extract import Extractor
from retrieval.search import Query, SearchEngine
from retrieval.vision import create_detector, create_segmenter

SHARED = Path(__file__).resolve().parents[2] / "shared"


def make_objects(n: int, workdir: Path, rng: np.random.Generator) -> list[tuple[bytes, str]]:
    """Returns (query crop JPEG, host file name) pairs; hosts are written into ``workdir``."""
    detector = create_detector("yolox_nano", model_dir=SHARED / "models")
    sources = sorted((SHARED / "data" / "caltech101-half").glob("*/*.jpg"))
    hosts = sorted((SHARED / "data" / "caltech101-distractors").glob("*.jpg"))
    order = rng.permutation(len(sources))
    pairs: list[tuple[bytes, str]] = []
    for idx in order:
        if len(pairs) >= n:
            break
        img = Image.open(sources[idx]).convert("RGB")
        dets = [d for d in detector.detect([np.asarray(img)])[0] if d.score >= 0.6]
        if not dets:
            continue
        x0, y0, x1, y1 = dets[0].box
        if (x1 - x0) < 48 or (y1 - y0) < 48:
            continue
        crop = img.crop((int(x0), int(y0), int(x1), int(y1)))
        host = Image.open(hosts[len(pairs) % len(hosts)]).convert("RGB")
        host = host.resize((host.width * 2, host.height * 2)) if max(host.size) < 400 else host
        scale = rng.uniform(0.35, 0.5) * max(host.size) / max(crop.size)
        pasted = crop.resize((max(1, int(crop.width * scale)), max(1, int(crop.height * scale))))
        px = int(rng.uniform(0, max(1, host.width - pasted.width)))
        py = int(rng.uniform(0, max(1, host.height - pasted.height)))
        host.paste(pasted, (px, py))
        name = f"host_{len(pairs):03d}.jpg"
        host.save(workdir / name, quality=92)
        buf = io.BytesIO()
        crop.save(buf, format="JPEG", quality=92)
        pairs.append((buf.getvalue(), name))
    return pairs


def index(photos: Path, data: Path, model: DescriptorModel, *, detect: bool, segment: bool) -> tuple[Collection, float]:
    col = Collection.open(data, model=model)
    det = create_detector("yolox_nano", model_dir=SHARED / "models", threads=1) if detect else None
    seg = create_segmenter("deeplabv3_mobilenetv2_voc", model_dir=SHARED / "models", threads=1) if segment else None
    ingest = LocalIngest.over(col, IngestSettings(batch_size=16, region_min_score=0.3), detector=det, segmenter=seg,
                              options=IndexOptions(progress=False))
    summary = ingest.run([photos])
    return col, summary.indexed / summary.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--others", type=int, default=500, help="other caltech101-half photos in the database")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="bench-objects-"))
    try:
        photos = work / "photos"
        photos.mkdir()
        pairs = make_objects(args.objects, photos, rng)
        others = sorted((SHARED / "data" / "caltech101-half").glob("*/*.jpg"))
        for i in rng.choice(len(others), size=min(args.others, len(others)), replace=False):
            shutil.copy(others[i], photos / f"other_{i:05d}.jpg")
        n_photos = len(list(photos.iterdir()))
        print(f"{len(pairs)} pasted objects, {n_photos} database photos")
        model = DescriptorModel.create()
        rates: dict[str, float] = {}
        for name, det, seg in (("plain", False, False), ("--detect", True, False), ("--detect --segment", True, True)):
            col, rate = index(photos, work / f"data-{len(rates)}", model, detect=det, segment=seg)
            rates[name] = rate
            if name == "--detect":
                engine = SearchEngine(col, Extractor(model, batch_size=4))
                host_ids = {}
                for rec in engine.iter_images():
                    for batch_rec in rec:
                        host_ids[Path(batch_rec.path or "").name] = batch_rec.id
                found = {"global": 0, "objects": 0}
                for crop, host in pairs:
                    for mode, objects in (("global", False), ("objects", True)):
                        hits = engine.search(Query(image=crop), k=args.k, objects=objects).hits
                        found[mode] += host_ids[host] in [h.image_id for h in hits]
                print(f"regions indexed: {col.count('region')}")
                for mode, n in found.items():
                    print(
                        f"recall@{args.k} of the host photo, {mode:8s} search: {n / len(pairs):.3f} ({n}/{len(pairs)})"
                    )
            col.close()
        for name, rate in rates.items():
            print(f"indexing {name:20s} {rate:6.2f} images/s ({rate / rates['plain']:.2f}x plain)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
