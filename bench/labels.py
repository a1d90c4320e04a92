"""Label-filter quality and speed of the ONNX detector and segmenter on Caltech-101 photos.

For the folders that clearly name a COCO/VOC class (``FOLDER_TO_LABEL``), the filter
"image has label X with score >= t" is scored against the folder names over *all*
photos (the other 37 folders are negatives), per label and overall (micro-average), for
a few thresholds. The baseline is a filter that picks images at random: its precision
is the label's prevalence. Speed: images/s of each model (preprocessing included,
JPEG decoding excluded), and of JPEG decoding as the reference it is compared with.

    /tmp/venv/bin/python -m bench.labels [--per-class N] [--thresholds 0.3 0.5 0.7]

Caveat: folder names are a weak ground truth (Motorbikes photos show riders, chairs show
tables), so precision is a lower bound on the true precision.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from retrieval.vision import create_detector, create_segmenter, image_labels

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "caltech101-half"

#: Caltech-101 folder -> COCO label, only for unambiguous matches (VOC names map to the same).
FOLDER_TO_LABEL: dict[str, str] = {
    "Faces": "person",
    "Motorbikes": "motorcycle",
    "chair": "chair",
    "cup": "cup",
    "elephant": "elephant",
    "laptop": "laptop",
    "umbrella": "umbrella",
    "ketch": "boat",
    "schooner": "boat",
    "pigeon": "bird",
    "flamingo": "bird",
    "ibis": "bird",
    "rooster": "bird",
}

Scores = dict[str, dict[str, float]]  # source -> label -> best score


def list_photos(root: Path, per_class: int) -> list[tuple[str, Path]]:
    """(folder, path) of every photo, at most ``per_class`` per folder when > 0."""
    photos = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.jpg"))
        photos += [(folder.name, f) for f in (files[:per_class] if per_class > 0 else files)]
    return photos


def run_models(
    photos: list[tuple[str, Path]], args: argparse.Namespace
) -> tuple[list[Scores], dict[str, float], list[str], list[str]]:
    """Label scores per photo, seconds spent decoding / detecting / segmenting, both vocabularies."""
    detector = create_detector(
        "yolox_nano", model_dir=args.model_dir, threads=args.threads, score_threshold=min(args.thresholds)
    )
    segmenter = create_segmenter("deeplabv3_mobilenetv2_voc", model_dir=args.model_dir, threads=args.threads)
    seconds: dict[str, float] = defaultdict(float)
    results: list[Scores] = []
    for start in range(0, len(photos), args.batch):
        t0 = time.perf_counter()
        images = [np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
                  for _, p in photos[start:start + args.batch]]  # fmt: skip
        t1 = time.perf_counter()
        dets = detector.detect(images)
        t2 = time.perf_counter()
        segs = segmenter.segment(images)
        t3 = time.perf_counter()
        seconds["decode"] += t1 - t0
        seconds["detector"] += t2 - t1
        seconds["segmenter"] += t3 - t2
        for image, det, seg in zip(images, dets, segs, strict=True):
            scores: Scores = {"detector": {}, "segmenter": {}}
            for row in image_labels(det, seg, image_size=(image.shape[1], image.shape[0])):
                if row.area_fraction >= args.min_area:
                    scores[row.source][row.label] = row.max_score
            results.append(scores)
    return results, dict(seconds), detector.class_names, segmenter.class_names


def precision_recall(tp: int, fp: int, fn: int) -> str:
    p = f"{tp / (tp + fp):.2f}" if tp + fp else "  - "
    r = f"{tp / (tp + fn):.2f}" if tp + fn else "  - "
    return f"{p}/{r}"


def print_table(photos: list[tuple[str, Path]], results: list[Scores], vocab: dict[str, list[str]],
                thresholds: list[float]) -> None:  # fmt: skip
    folders = [f for f, _ in photos]
    labels = sorted(set(FOLDER_TO_LABEL.values()))
    head = " ".join(f"{'P/R@' + str(t):>10}" for t in thresholds)
    print(f"{'label':<11}{'pos':>5}{'prev':>6} | detector (yolox_nano) {head} | segmenter (deeplabv3) {head}")
    totals: dict[tuple[str, float], list[int]] = defaultdict(lambda: [0, 0, 0])
    for label in labels:
        truth = np.array([FOLDER_TO_LABEL.get(f) == label for f in folders])
        cells = []
        for source in ("detector", "segmenter"):
            parts = []
            for t in thresholds:
                if label not in vocab[source]:
                    parts.append(f"{'n/a':>10}")
                    continue
                pred = np.array([r[source].get(label, -1.0) >= t for r in results])
                tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
                for i, v in enumerate((tp, fp, fn)):
                    totals[(source, t)][i] += v
                parts.append(f"{precision_recall(tp, fp, fn):>10}")
            cells.append(" ".join(parts))
        print(f"{label:<11}{int(truth.sum()):>5}{truth.mean():>6.3f} | {'':22}{cells[0]} | {'':22}{cells[1]}")
    overall = [" ".join(f"{precision_recall(*totals[(s, t)]):>10}" for t in thresholds)
               for s in ("detector", "segmenter")]  # fmt: skip
    print(f"{'overall':<11}{'':>11} | {'':22}{overall[0]} | {'':22}{overall[1]}")
    print("(P/R = precision/recall; prev = prevalence = precision of a random filter; segmenter rows only for "
          "VOC classes, micro-averaged over the labels each model knows)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--per-class", type=int, default=0, help="photos per folder (0 = all)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--min-area", type=float, default=0.0, help="also require this area fraction")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    photos = list_photos(args.data, args.per_class)
    missing = sorted(set(FOLDER_TO_LABEL) - {f for f, _ in photos})
    print(f"{len(photos)} photos in {len({f for f, _ in photos})} folders from {args.data}"
          + (f"; mapped folders absent: {missing}" if missing else ""))  # fmt: skip
    results, seconds, det_vocab, seg_vocab = run_models(photos, args)
    print_table(photos, results, {"detector": det_vocab, "segmenter": seg_vocab}, args.thresholds)
    n = len(photos)
    decode_rate = n / seconds["decode"]
    print(f"\nspeed over {n} photos: JPEG decode {decode_rate:.1f} images/s (reference)")
    for model in ("detector", "segmenter"):
        rate = n / seconds[model]
        ms = 1000 / rate
        print(f"  {model:<10} {rate:7.1f} images/s  ({ms:.1f} ms/image, {decode_rate / rate:.2f}x decode time)")


if __name__ == "__main__":
    main()
