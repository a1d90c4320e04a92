"""``imsearch train``: fine-tune the descriptor model with triplets and hard negatives (groups or copies)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Retrain the embedding (Gordo et al., "Deep Image Retrieval"): backbone -> R-MAC -> shift +
projection (initialized from PCA-whitening of the training images) -> sum -> L2, trained end
to end with a triplet loss on hard negatives mined from the current model every epoch.

DATA is one of:
  a folder of groups   DATA/<group>/*.jpg, one folder per object, place or class
  a groups CSV         columns path,group (one row per image; names: --set path_column=...)
  a triplets CSV       columns anchor,positive,negative (names: --set anchor_column=...)
  a folder of photos   no group sub-folders: self-supervised (chosen automatically, logged)
  a collection         an `imsearch index` data directory (with catalog.db): its indexed
                       photos, self-supervised
Relative CSV paths are relative to the CSV file. Whole groups are held out for validation
(for triplets, a group is a connected set of anchor-positive pairs). Grouped data gets hard
negatives mined each epoch; a triplets CSV uses its listed negatives (plus mined ones with
--set mine_triplets=true).

--self-supervised (copy detection; any DATA, its groups ignored): every photo is its own
group. The positive of a photo (or of an edited copy of it) is another strong edit of it
(crops to 30 %, rotations, flips, perspective, colour, grey, blur, noise, JPEG 20-60, text,
shapes, borders, screenshots: retrieval.edits, seeded by seed, epoch and photo), and the
negatives are the other photos (shown edited or not) most similar to it under the current
model, never a byte-identical twin. The initial projection is learned from (photo, copy)
pairs (whiten_method=copies). A seeded share of the photos (val_fraction) is held out.

Validation, every epoch (epoch 0 is the starting model): edited copies of held-out photos
are searched among the held-out originals and val_distractors training photos (copy R@1,
mAP and μAP), and for groups the held-out groups' mAP. best.pt is the epoch with the best
copy μAP (self-supervised) or groups mAP (groups), so it is never worse on validation than
the starting model.

Settings are layered: defaults, then --config FILE (JSON or YAML), then the options below,
then --set KEY=VALUE. The resolved settings are written to DIR/config.json. Every epoch
writes DIR/last.pt and (when validation improved) DIR/best.pt: model files that
`imsearch index --model FILE` and the API load directly; plus DIR/checkpoint.pt (for
--resume), DIR/history.jsonl (loss and validation metrics per epoch) and DIR/training.png.
DIR/init.pt is the starting model (for a before/after comparison).

More settings for --set (defaults in brackets):
  data: csv_format [auto|groups|triplets], val_fraction [0.1], min_val_groups [2]
  model: init_model [none], weights [default], gem_p [3], max_side [512], scales [[1,0.707,0.5]],
         whiten [true], whiten_dim [null: all], whiten_power [0: PCA rotation; 0.5: full whitening],
         whitening_images [1000], whiten_method [auto: copies if self-supervised, else pca | pca |
         lw: learned from the groups | copies: learned from edited copies], lw_shrink [0.75],
         whiten_copies [2], copy_shrink [0.75]
  loss: distance [squared|euclidean] (triplet only), koleo_weight [0: off; uniformity as SSCD]
  mining: queries_per_epoch [500], pool_size [2000], negatives [5], hard_positives [false],
          query_sampling [balanced|uniform], mine_triplets [false]
  self-supervised: anchor_original [0.5: chance the anchor is the photo itself],
          negative_edit [0.5: chance a negative is an edited copy]
  validation: val_copy_queries [200 edited copies; 0: off], val_distractors [500]
  optimizer: optimizer [adam|sgd], lr [1e-5], head_lr_mult [10], weight_decay [1e-6],
             lr_decay [0.97 per epoch], batch_size [4 tuples], accumulate [1], freeze [[]]
  images: image_size [320], augment [true], crop_scale [[0.5,1]], crop_ratio [[0.75,1.33]],
          flip [true], color_jitter [0.2] (groups; self-supervised runs see their edits instead)
  runtime: seed [0], precision [auto|bf16|fp16|fp32], workers [2], mining_batch [16]
On CPU cores shared with other jobs, run with OMP_WAIT_POLICY=PASSIVE in the environment:
busy-waiting OpenMP threads otherwise slow training down several times.

examples:
  imsearch train ~/photos/landmarks --out runs/lm1 --epochs 20
  imsearch train ~/Photos --self-supervised --out runs/copies1 --epochs 5
  imsearch train imsearch-data --out runs/copies2     # a collection: its indexed photos
  imsearch train pairs.csv --out runs/csv1 --loss contrastive --pooling gem --device cuda
  imsearch train ~/photos/landmarks --out runs/lm1 --resume --epochs 30
  imsearch train data/ --out runs/small --config train.yaml --set image_size=256 lr=2e-5
  imsearch index ~/Photos --model runs/lm1/best.pt
"""


def register(subparsers: Any) -> None:
    """Add the ``train`` sub-command."""
    p = subparsers.add_parser(
        "train",
        help="fine-tune the descriptor model with triplets (folder of groups or CSV)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", metavar="DATA",
                   help="folder of group folders or of photos, a collection data dir, or a CSV (groups or triplets)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for models, checkpoint and logs")
    p.add_argument("--backbone", help="backbone of a new model, e.g. efficientnet_lite0 (default), resnet50, vgg16")
    p.add_argument(
        "--self-supervised",
        action="store_true",
        default=None,
        help="every photo its own group, positives edited copies of it (copy detection; groups ignored)",
    )
    p.add_argument("--init-model", metavar="FILE", help="start from this model file instead (e.g. a previous best.pt)")
    p.add_argument("--epochs", type=int, help="number of epochs [10], e.g. --epochs 20")
    p.add_argument(
        "--margin",
        type=float,
        help="loss margin [0.1 for triplet, on SQUARED L2 distances; 0.7 for contrastive], e.g. 0.1",
    )
    p.add_argument("--loss", choices=("triplet", "contrastive"), help="ranking loss [triplet]")
    p.add_argument("--pooling", choices=("rmac", "gem"), help="pooling of a new model [rmac]; gem learns its p")
    p.add_argument("--image-size", type=int, metavar="PX", help="training crop side and mining size [320], e.g. 256")
    p.add_argument("--lr", type=float, help="backbone learning rate [1e-5]; the head gets lr x head_lr_mult")
    p.add_argument("--device", help="auto (CUDA when available) [auto], cpu, cuda, cuda:1")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in DIR from its last checkpoint (only epochs/device/workers may change)",
    )
    p.add_argument("--config", metavar="FILE", help="JSON or YAML file of settings, e.g. train.yaml")
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="any setting (values parsed as JSON), e.g. --set pool_size=4000 hard_positives=true",
    )
    p.set_defaults(func=run)


_FLAGS = {
    "backbone": "backbone",
    "init_model": "init_model",
    "epochs": "epochs",
    "margin": "margin",
    "loss": "loss",
    "pooling": "pooling",
    "image_size": "image_size",
    "lr": "lr",
    "device": "device",
    "self_supervised": "self_supervised",
}


def run(args: argparse.Namespace) -> int:
    """Train; exit code 0 on success."""
    from retrieval.train.config import parse_override
    from retrieval.train.trainer import Trainer, run_config

    overrides: dict[str, Any] = {"data": args.data, "out": args.out}
    overrides.update({key: getattr(args, attr) for attr, key in _FLAGS.items() if getattr(args, attr) is not None})
    overrides.update(dict(parse_override(o) for o in args.overrides))
    config = run_config(args.out, args.config, overrides, resume=args.resume)
    result = Trainer(config, resume=args.resume).fit()
    last = result.history[-1] if result.history else {}
    logger.info(
        "done: best.pt from epoch %d (%s); last.pt after epoch %s, step %s",
        result.best_epoch,
        f"{result.metric} {result.best_score:.4f}" if result.metric != "-loss" else "no validation: lowest loss",
        last.get("epoch"),
        last.get("step"),
    )
    print(f"best model: {result.best}\nlast model: {result.last}\nlog: {result.out / 'history.jsonl'}")
    return 0
