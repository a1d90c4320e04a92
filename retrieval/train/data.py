"""Training data: images with a group each (same object/place/class = same group), or triplets.

Three inputs are read:

* a **folder of groups**: ``ROOT/<group>/**/*.jpg`` (one sub-folder per group);
* a **groups CSV**: one row per image, a path column and a group column;
* a **triplets CSV**: one row per (anchor, positive, negative). Groups are then the
  connected components of the anchor-positive pairs (images that are positives of one
  another, directly or through others); images only ever used as negatives are groups of one.

Relative paths in a CSV are relative to the CSV's folder. Groups with fewer than two
images are skipped with a warning (they can give no positive pair), except the
negative-only images of a triplets CSV. Validation holds out whole groups
(:func:`split_by_group`), never single images of a group.

Unlabelled photos (a folder without group sub-folders, a collection's data directory, or
any input with ``self_supervised``) are read by :mod:`retrieval.train.photos`: every photo
is then its own group (:attr:`TrainingData.self_supervised`).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.errors import TrainingError
from retrieval.evaluate import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

IntArray = np.ndarray


@dataclass(frozen=True)
class TrainingData:
    """Images, the group of each, and (for a triplets CSV) the listed triplets."""

    paths: tuple[Path, ...]
    groups: IntArray  # (n,) int64: index into group_names
    group_names: tuple[str, ...]
    triplets: IntArray | None = None  # (t, 3) int64 indices into paths: anchor, positive, negative
    source: str = ""
    #: every photo its own group (groups = distinct contents, group_names = their sha256)
    self_supervised: bool = False

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.groups):
            raise TrainingError(f"{len(self.paths)} paths but {len(self.groups)} groups")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labels(self) -> list[str]:
        """The group name of each image."""
        return [self.group_names[g] for g in self.groups.tolist()]

    def members(self) -> dict[int, IntArray]:
        """Group index -> indices of its images (ascending)."""
        order = np.argsort(self.groups, kind="stable")
        bounds = np.flatnonzero(np.diff(self.groups[order])) + 1
        return {int(self.groups[chunk[0]]): np.sort(chunk) for chunk in np.split(order, bounds) if chunk.size}

    def subset(self, indices: Sequence[int] | IntArray, triplets: IntArray | None = None) -> TrainingData:
        """The images at ``indices`` (groups renumbered); ``triplets`` in the old numbering."""
        idx = np.asarray(indices, dtype=np.int64)
        used = np.unique(self.groups[idx])
        remap = {int(g): i for i, g in enumerate(used.tolist())}
        new_groups = np.asarray([remap[int(g)] for g in self.groups[idx]], dtype=np.int64)
        new_trip = None
        if triplets is not None:
            pos = np.full(len(self.paths), -1, dtype=np.int64)
            pos[idx] = np.arange(idx.size)
            new_trip = pos[triplets]
        return TrainingData(
            paths=tuple(self.paths[i] for i in idx.tolist()),
            groups=new_groups,
            group_names=tuple(self.group_names[g] for g in used.tolist()),
            triplets=new_trip,
            source=self.source,
            self_supervised=self.self_supervised,
        )


# --------------------------------------------------------------------------- readers
def folder_groups(root: str | Path) -> TrainingData:
    """One group per sub-folder of ``root`` (images found recursively inside each)."""
    root = Path(root)
    if not root.is_dir():
        raise TrainingError(f"training folder {root} does not exist or is not a folder")
    paths: list[Path] = []
    groups: list[int] = []
    names: list[str] = []
    for folder in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=str):
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if len(images) < 2:
            logger.warning("group folder %s has %d image(s); skipped (a group needs at least 2)", folder, len(images))
            continue
        groups += [len(names)] * len(images)
        names.append(folder.name)
        paths += images
    loose = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
    if loose:
        logger.warning("%d image(s) directly in %s belong to no group folder; ignored", len(loose), root)
    if not names:
        raise TrainingError(
            f"{root} has no group folder with at least 2 images; lay the data out as {root}/<group>/<image>.jpg "
            "(one folder per object, place or class)"
        )
    return TrainingData(tuple(paths), np.asarray(groups, dtype=np.int64), tuple(names), source=str(root))


def _read_csv(path: Path, columns: Sequence[str]) -> list[tuple[int, list[str]]]:
    """(line number, values of ``columns``) of each data row; clear errors for bad files."""
    if not path.is_file():
        raise TrainingError(f"CSV file {path} does not exist")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in columns if c not in header]
            if missing:
                raise TrainingError(
                    f"{path}: missing column(s) {missing}; the header has {header or 'nothing'}. "
                    "Name the columns with the *_column settings (e.g. --set path_column=file)"
                )
            reader.fieldnames = header
            rows = []
            for row in reader:
                values = [(row.get(c) or "").strip() for c in columns]
                if not any(values):
                    continue  # blank line
                empty = [c for c, v in zip(columns, values, strict=True) if not v]
                if empty:
                    raise TrainingError(f"{path}, line {reader.line_num}: empty value in column(s) {empty}")
                rows.append((reader.line_num, values))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise TrainingError(f"{path} is not a readable UTF-8 CSV file: {exc}") from exc
    if not rows:
        raise TrainingError(f"{path} has a header but no data rows")
    return rows


def _resolve(path: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else path.parent / p


def _check_exist(csv_path: Path, located: Sequence[tuple[int, Path]]) -> None:
    missing = [(line, p) for line, p in located if not p.is_file()]
    if missing:
        shown = "; ".join(f"line {line}: {p}" for line, p in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise TrainingError(
            f"{csv_path}: {len(missing)} listed image(s) do not exist: {shown}{more}. "
            "Relative paths are taken relative to the CSV file's folder"
        )


def group_csv(path: str | Path, path_column: str = "path", group_column: str = "group") -> TrainingData:
    """A CSV with one row per image: its path and its group."""
    path = Path(path)
    rows = _read_csv(path, (path_column, group_column))
    located = [(line, _resolve(path, v[0])) for line, v in rows]
    _check_exist(path, located)
    group_of: dict[Path, tuple[str, int]] = {}
    for (line, p), (_, values) in zip(located, rows, strict=True):
        key = p.resolve()
        if key in group_of and group_of[key][0] != values[1]:
            raise TrainingError(
                f"{path}, line {line}: {p} is in group {values[1]!r} but line {group_of[key][1]} "
                f"puts it in group {group_of[key][0]!r}; an image belongs to one group"
            )
        group_of.setdefault(key, (values[1], line))
    by_group: dict[str, list[Path]] = {}
    for (_, p), (_, values) in zip(located, rows, strict=True):
        members = by_group.setdefault(values[1], [])
        if p not in members:
            members.append(p)
    paths: list[Path] = []
    groups: list[int] = []
    names: list[str] = []
    for name in sorted(by_group):
        if len(by_group[name]) < 2:
            logger.warning("%s: group %r has only 1 image; skipped (a group needs at least 2)", path, name)
            continue
        groups += [len(names)] * len(by_group[name])
        names.append(name)
        paths += by_group[name]
    if not names:
        raise TrainingError(f"{path}: no group has at least 2 images, so there is no positive pair to train on")
    return TrainingData(tuple(paths), np.asarray(groups, dtype=np.int64), tuple(names), source=str(path))


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def triplet_csv(
    path: str | Path,
    anchor_column: str = "anchor",
    positive_column: str = "positive",
    negative_column: str = "negative",
) -> TrainingData:
    """A CSV with one (anchor, positive, negative) triplet per row."""
    path = Path(path)
    rows = _read_csv(path, (anchor_column, positive_column, negative_column))
    index: dict[Path, int] = {}
    paths: list[Path] = []
    triplets: list[tuple[int, int, int]] = []
    lines: list[int] = []
    located: list[tuple[int, Path]] = []
    for line, values in rows:
        ids = []
        for v in values:
            p = _resolve(path, v)
            key = p.resolve()
            if key not in index:
                index[key] = len(paths)
                paths.append(p)
                located.append((line, p))
            ids.append(index[key])
        a, pos, neg = ids
        if len({a, pos, neg}) < 3:
            raise TrainingError(f"{path}, line {line}: anchor, positive and negative must be three different images")
        triplets.append((a, pos, neg))
        lines.append(line)
    _check_exist(path, located)
    uf = _UnionFind(len(paths))
    for a, pos, _ in triplets:
        uf.union(a, pos)
    for (a, _, neg), line in zip(triplets, lines, strict=True):
        if uf.find(a) == uf.find(neg):
            raise TrainingError(
                f"{path}, line {line}: the negative {paths[neg]} is also a positive of the anchor {paths[a]} "
                "through other rows (anchor-positive pairs link them); fix the contradicting rows"
            )
    roots = sorted({uf.find(i) for i in range(len(paths))})
    group_of_root = {r: g for g, r in enumerate(roots)}
    groups = np.asarray([group_of_root[uf.find(i)] for i in range(len(paths))], dtype=np.int64)
    names = tuple(f"group{g:05d}:{paths[r].stem}" for g, r in enumerate(roots))
    return TrainingData(
        tuple(paths), groups, names, triplets=np.asarray(triplets, dtype=np.int64).reshape(-1, 3), source=str(path)
    )


def _csv_header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return [h.strip() for h in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TrainingError(f"cannot read CSV file {path}: {exc}") from exc


def load_training_data(
    source: str | Path,
    *,
    csv_format: str = "auto",
    path_column: str = "path",
    group_column: str = "group",
    anchor_column: str = "anchor",
    positive_column: str = "positive",
    negative_column: str = "negative",
    self_supervised: bool = False,
) -> TrainingData:
    """Read a folder of groups or a CSV (``csv_format``: auto, groups or triplets), or unlabelled photos.

    Photos, every one its own group (:mod:`retrieval.train.photos`), are read for
    ``self_supervised``, for a collection's data directory, and for a folder without group
    sub-folders (the last two are logged as chosen automatically).
    """
    from retrieval.train import photos

    source = Path(source).expanduser()
    if not str(source):
        raise TrainingError("no training data given: pass a folder of groups or photos, or a CSV file")
    if source.is_dir():
        if photos.is_collection_dir(source):
            logger.info("%s is a collection's data directory: self-supervised training on its indexed photos",
                        source)
            return photos.collection_photos(source)
        if self_supervised:
            return photos.photo_folder(source)
        if not photos.has_group_folders(source):
            logger.info("%s has no group sub-folders: self-supervised training, every photo its own group "
                        "(positives are edited copies of it)", source)
            return photos.photo_folder(source)
        return folder_groups(source)
    if not source.exists():
        raise TrainingError(f"training data {source} does not exist (give a folder of groups or a CSV file)")
    if self_supervised:
        return photos.photo_csv(source, path_column)
    if csv_format == "auto":
        header = _csv_header(source)
        csv_format = "triplets" if anchor_column in header else "groups"
    if csv_format == "triplets":
        return triplet_csv(source, anchor_column, positive_column, negative_column)
    return group_csv(source, path_column, group_column)


# --------------------------------------------------------------------------- split
def split_by_group(
    data: TrainingData, val_fraction: float, *, min_val_groups: int = 2, seed: int = 0
) -> tuple[TrainingData, TrainingData | None]:
    """Hold out whole groups for validation: ``(train, val)``; ``val`` is None when too few groups.

    ``round(val_fraction * groups)`` groups of two or more images (at least ``min_val_groups``)
    are drawn with a seeded permutation; at least two groups always stay for training. For
    triplets, a triplet is kept for training only if all three images are training images.
    """
    members = data.members()
    multi = sorted(g for g, idx in members.items() if idx.size >= 2)
    n_val = max(min_val_groups, round(val_fraction * len(multi))) if val_fraction > 0 else 0
    if n_val and len(multi) - n_val < 2:
        logger.warning(
            "only %d groups with 2+ images: not enough to hold %d out for validation and train on 2+; "
            "training without validation",
            len(multi),
            n_val,
        )
        n_val = 0
    rng = np.random.default_rng(seed)
    val_groups = set(rng.permutation(np.asarray(multi, dtype=np.int64))[:n_val].tolist())
    is_val = np.asarray([int(g) in val_groups for g in data.groups], dtype=bool)
    train_idx = np.flatnonzero(~is_val)
    triplets = None
    if data.triplets is not None:
        keep = ~is_val[data.triplets].any(axis=1)
        dropped_neg = int((~is_val[data.triplets[:, 0]] & is_val[data.triplets[:, 2]]).sum())
        if dropped_neg:
            logger.warning("%d training triplet(s) dropped: their negative is a validation image", dropped_neg)
        triplets = data.triplets[keep]
        if triplets.shape[0] == 0:
            raise TrainingError(f"{data.source}: no triplet is left for training after the validation split")
    train = data.subset(train_idx, triplets)
    val = data.subset(np.flatnonzero(is_val)) if n_val else None
    return train, val
