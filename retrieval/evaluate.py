"""Retrieval evaluation: AP / mAP, precision@k, recall@k, Revisited Oxford/Paris, folder classes.

Conventions (all metrics are fractions in [0, 1], not percentages):

* A *ranking* is a 1-D integer array of database indices, best first; it may be truncated
  (positives never retrieved then contribute 0 to AP). Negative entries are padding (FAISS
  writes -1 when fewer than k results exist): never relevant, never junk, kept in place.
* *Junk* items are removed from the ranking before any metric is computed (Oxford/Paris
  protocol): they neither help nor hurt.
* AP ``"step"``: mean over all positives of the precision at each positive's rank.
  AP ``"trapezoid"``: the trapezoidal rule of Philbin et al., as in ``compute_ap`` of the
  Revisited Oxford/Paris evaluation (Radenović et al. 2018), so numbers match it.
* ``precision_at_k``: positives among the first k (after junk removal) divided by k.
* ``recall_at_k``: 1.0 when at least one positive is among the first k, else 0.0; its mean over
  queries is the usual retrieval "recall@k" (= hit@k) of place recognition / metric learning
  (NOT the fraction of a query's positives found in the top k).
* Queries without any positive have an undefined AP: :func:`average_precision` raises, the
  mean functions skip them and count them in ``EvalResult.n_skipped`` (as the Revisited code).
"""

from __future__ import annotations

import codecs
import logging
import pickle
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, cast

import numpy as np
import numpy.typing as npt

from retrieval.errors import EvaluationError, UnknownNameError

if TYPE_CHECKING:
    from retrieval.models.extract import Extractor

log = logging.getLogger(__name__)

Interpolation = Literal["step", "trapezoid"]
IntArray = npt.NDArray[np.int64]
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
REVISITED_SETUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # setup: (fields that are positives, fields that are junk) -- as the official protocol
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}
_CHUNK_ELEMENTS = 1 << 22  # similarity-matrix elements per chunk (16 MiB of float32)


# --------------------------------------------------------------------------- core metrics
def _step_ap(pos: npt.NDArray[np.intp], n_pos: int) -> float:
    r = pos.astype(np.float64)
    hits = np.arange(1, pos.size + 1, dtype=np.float64)
    return float(np.sum(hits / (r + 1.0)) / n_pos)


def _trapezoid_ap(pos: npt.NDArray[np.intp], n_pos: int) -> float:
    r = pos.astype(np.float64)
    before = np.arange(pos.size, dtype=np.float64)  # positives strictly before this one
    prec_before = np.divide(before, r, out=np.ones_like(r), where=r > 0)
    prec_after = (before + 1.0) / (r + 1.0)
    return float(np.sum((prec_before + prec_after) / 2.0) / n_pos)


_AP_RULES: dict[str, Callable[[npt.NDArray[np.intp], int], float]] = {
    "step": _step_ap,
    "trapezoid": _trapezoid_ap,
}


def _ap_rule(interpolation: str) -> Callable[[npt.NDArray[np.intp], int], float]:
    rule = _AP_RULES.get(interpolation)
    if rule is None:
        raise UnknownNameError("interpolation", interpolation, list(_AP_RULES))
    return rule


def _index_array(values: Any, what: str) -> IntArray:
    try:
        arr = values if isinstance(values, np.ndarray) else np.asarray(list(values))
    except TypeError:
        raise EvaluationError(f"{what} must be a collection of database indices, got {values!r}") from None
    if arr.ndim != 1:
        raise EvaluationError(f"{what} must be a 1-D collection of database indices, got shape {arr.shape}")
    if arr.size and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
        raise EvaluationError(f"{what} must hold integer database indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise EvaluationError(f"{what} holds a negative database index ({arr.min()}); indices start at 0")
    return arr


def _query_sets(positives: Any, junk: Any, what: str) -> tuple[IntArray, IntArray]:
    ok = np.unique(_index_array(positives, f"{what} positives"))
    jk = np.unique(_index_array(junk, f"{what} junk"))
    both = np.intersect1d(ok, jk)
    if both.size:
        raise EvaluationError(f"{what}: indices {both[:5].tolist()} are both positive and junk; pick one")
    return ok, jk


def _ranking(ranked: Any) -> npt.NDArray[np.integer[Any]]:
    arr = np.asarray(ranked)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise EvaluationError(
            f"ranked must be a 1-D integer array of database indices, got shape {arr.shape} dtype {arr.dtype}"
        )
    real = arr[arr >= 0]
    if np.unique(real).size != real.size:
        raise EvaluationError("ranked lists a database index more than once; a ranking is a permutation")
    return arr


def _positive_positions(ranked: np.ndarray, ok: IntArray, junk: IntArray) -> npt.NDArray[np.intp]:
    """0-based positions of the positives in ``ranked`` once the junk items are taken out."""
    if junk.size:
        ranked = ranked[~np.isin(ranked, junk)]
    return np.flatnonzero(np.isin(ranked, ok))


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise EvaluationError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _precision(pos: npt.NDArray[np.intp], k: int, cap_at_last_positive: bool) -> float:
    if cap_at_last_positive and pos.size:
        k = min(k, int(pos[-1]) + 1)
    return float(np.count_nonzero(pos < k) / k)


def average_precision(
    ranked: npt.ArrayLike,
    positives: Collection[int] | np.ndarray,
    junk: Collection[int] | np.ndarray = (),
    *,
    interpolation: Interpolation = "step",
) -> float:
    """AP of one ranking (junk removed first); positives never retrieved count as 0.

    Raises :class:`EvaluationError` when there are no positives (AP is undefined: skip the query).
    """
    rule = _ap_rule(interpolation)
    arr = _ranking(ranked)
    ok, jk = _query_sets(positives, junk, "query")
    if ok.size == 0:
        raise EvaluationError("the query has no positives, so its AP is undefined; leave it out of the mean")
    return rule(_positive_positions(arr, ok, jk), int(ok.size))


def precision_at_k(
    ranked: npt.ArrayLike,
    positives: Collection[int] | np.ndarray,
    junk: Collection[int] | np.ndarray = (),
    *,
    k: int,
) -> float:
    """Positives among the first ``k`` items (junk removed first), divided by ``k``."""
    ok, jk = _query_sets(positives, junk, "query")
    return _precision(_positive_positions(_ranking(ranked), ok, jk), _check_k(k), False)


def recall_at_k(
    ranked: npt.ArrayLike,
    positives: Collection[int] | np.ndarray,
    junk: Collection[int] | np.ndarray = (),
    *,
    k: int,
) -> float:
    """1.0 if at least one positive is among the first ``k`` (junk removed first), else 0.0 (hit@k)."""
    ok, jk = _query_sets(positives, junk, "query")
    pos = _positive_positions(_ranking(ranked), ok, jk)
    return 1.0 if pos.size and pos[0] < _check_k(k) else 0.0


# --------------------------------------------------------------------------- mean over queries
@dataclass(frozen=True)
class EvalResult:
    """Metrics over a query set. ``aps`` has one entry per query, NaN for skipped queries.

    ``map``, ``mp_at_k`` (mean precision@k) and ``recall_at_k`` (fraction of queries with at
    least one positive in the top k, i.e. hit@k) average over the ``n_queries - n_skipped``
    queries that have positives.
    """

    map: float
    aps: npt.NDArray[np.float64]
    mp_at_k: dict[int, float]
    recall_at_k: dict[int, float]
    n_queries: int
    n_skipped: int

    def summary(self) -> str:
        """One line, e.g. ``mAP 0.5312 | mP@1 0.8000 ... | R@1 0.8000 ... | 55 queries (0 skipped)``."""
        mp = " ".join(f"mP@{k} {v:.4f}" for k, v in self.mp_at_k.items())
        rc = " ".join(f"R@{k} {v:.4f}" for k, v in self.recall_at_k.items())
        return f"mAP {self.map:.4f} | {mp} | {rc} | {self.n_queries} queries ({self.n_skipped} skipped)"


class _Accumulator:
    """Per-query metrics gathered one ranking at a time (so callers can work in chunks)."""

    def __init__(self, interpolation: str, ks: Iterable[int], cap_at_last_positive: bool) -> None:
        self.rule = _ap_rule(interpolation)
        self.ks = tuple(sorted({_check_k(k) for k in ks}))
        self.cap = cap_at_last_positive
        self.aps: list[float] = []
        self.precisions: list[list[float]] = []
        self.hits: list[list[bool]] = []

    def add(self, ranked: np.ndarray, ok: IntArray, junk: IntArray) -> None:
        if ok.size == 0:
            self.aps.append(float("nan"))
            return
        pos = _positive_positions(ranked, ok, junk)
        self.aps.append(self.rule(pos, int(ok.size)))
        self.precisions.append([_precision(pos, k, self.cap) for k in self.ks])
        self.hits.append([bool(pos.size and pos[0] < k) for k in self.ks])

    def result(self) -> EvalResult:
        aps = np.asarray(self.aps, dtype=np.float64)
        n_eval = len(self.precisions)
        if n_eval == 0:
            raise EvaluationError(f"none of the {aps.size} queries has a positive; nothing to evaluate")
        if n_eval < aps.size:
            log.info("skipped %d of %d queries without positives", aps.size - n_eval, aps.size)
        prec = np.asarray(self.precisions, dtype=np.float64).reshape(n_eval, len(self.ks)).mean(axis=0)
        hit = np.asarray(self.hits, dtype=np.float64).reshape(n_eval, len(self.ks)).mean(axis=0)
        return EvalResult(
            map=float(np.mean(aps[~np.isnan(aps)])),
            aps=aps,
            mp_at_k={k: float(v) for k, v in zip(self.ks, prec, strict=True)},
            recall_at_k={k: float(v) for k, v in zip(self.ks, hit, strict=True)},
            n_queries=int(aps.size),
            n_skipped=int(aps.size - n_eval),
        )


def _gnd_field(entry: Any, key: str, i: int, required: bool) -> IntArray:
    value = entry.get(key) if isinstance(entry, Mapping) else getattr(entry, key, None)
    if value is None:
        if required:
            raise EvaluationError(f"ground truth of query {i} has no {key!r} field")
        return np.empty(0, dtype=np.int64)
    return _index_array(value, f"ground truth of query {i}, {key!r}")


def _rank_matrix(ranks: npt.ArrayLike, n_queries: int) -> np.ndarray:
    arr = np.asarray(ranks)
    if arr.ndim != 2 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise EvaluationError(
            f"ranks must be a 2-D integer array (n_queries, n_ranked), got {arr.shape} {arr.dtype}"
        )
    if arr.shape[0] != n_queries:
        hint = " (transpose it: the official revisitop code uses (n_db, n_queries))"
        raise EvaluationError(
            f"ranks has {arr.shape[0]} rows but there are {n_queries} queries"
            + (hint if arr.ndim == 2 and arr.shape[1] == n_queries else "")
        )
    if arr.shape[1] > 1:
        s = np.sort(arr, axis=1)
        dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
        if dup.any():
            row = int(np.flatnonzero(dup.any(axis=1))[0])
            raise EvaluationError(f"ranks row {row} lists a database index more than once")
    return arr


def mean_average_precision(
    ranks: npt.ArrayLike,
    gnd: Sequence[Any],
    *,
    interpolation: Interpolation = "step",
    ks: Iterable[int] = (1, 5, 10),
    cap_k_at_last_positive: bool = False,
) -> EvalResult:
    """mAP, mean precision@k and recall@k (hit@k) of ``ranks`` (n_queries, n_ranked).

    ``gnd[i]`` is a mapping or an object with ``ok`` (positives) and optionally ``junk``.
    ``cap_k_at_last_positive`` reproduces the Revisited code's precision@k, which divides by
    ``min(k, rank of the last retrieved positive)`` instead of ``k``.
    """
    acc = _Accumulator(interpolation, ks, cap_k_at_last_positive)
    arr = _rank_matrix(ranks, len(gnd))
    for i, entry in enumerate(gnd):
        ok, jk = _query_sets(
            _gnd_field(entry, "ok", i, True), _gnd_field(entry, "junk", i, False), f"query {i}"
        )
        acc.add(arr[i], ok, jk)
    return acc.result()


# --------------------------------------------------------------------------- Revisited Oxford/Paris
@dataclass(frozen=True)
class RevisitedQuery:
    easy: IntArray
    hard: IntArray
    junk: IntArray
    bbx: tuple[float, float, float, float] | None


@dataclass(frozen=True)
class RevisitedGroundTruth:
    """Contents of ``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl``."""

    imlist: list[str]
    qimlist: list[str]
    queries: list[RevisitedQuery]

    def setup(self, name: str) -> list[dict[str, IntArray]]:
        """Per-query ``{"ok", "junk"}`` for setup ``"easy"``, ``"medium"`` or ``"hard"``."""
        return _revisited_setup(self.queries, name)


def _revisited_setup(queries: Sequence[RevisitedQuery], name: str) -> list[dict[str, IntArray]]:
    if name not in REVISITED_SETUPS:
        raise UnknownNameError("Revisited setup", name, list(REVISITED_SETUPS))
    ok_fields, junk_fields = REVISITED_SETUPS[name]
    return [
        {
            "ok": np.concatenate([getattr(q, f) for f in ok_fields]),
            "junk": np.concatenate([getattr(q, f) for f in junk_fields]),
        }
        for q in queries
    ]


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {("_codecs", "encode"): codecs.encode}
    for module in ("builtins", "__builtin__"):
        for t in (list, dict, tuple, set, frozenset, int, float, complex, str, bytes, bytearray, bool):
            allowed[(module, t.__name__)] = t
    sample = np.zeros(1)
    numpy_functions: dict[str, list[Any]] = {
        "multiarray": [sample.__reduce__()[0], np.float64(0).__reduce__()[0]],  # _reconstruct, scalar
        "numeric": [sample.__reduce_ex__(5)[0]],  # _frombuffer
    }
    for core in ("numpy.core", "numpy._core"):
        for sub, funcs in numpy_functions.items():
            for f in funcs:
                allowed[(f"{core}.{sub}", f.__name__)] = f
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only builtin containers/scalars and numpy arrays; any other global is refused."""

    def __init__(self, file: BinaryIO, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise EvaluationError(
                f"{self.source}: the pickle references {module}.{name}, which a ground-truth file never"
                " needs; refusing to load it (only builtin containers and numpy arrays are allowed)"
            ) from None


def _revisited_query(entry: Any, i: int, n_db: int | None) -> RevisitedQuery:
    if not isinstance(entry, Mapping):
        raise EvaluationError(
            f"ground truth of query {i} must be a dict with easy/hard/junk, got {type(entry)}"
        )
    fields = {k: _gnd_field(entry, k, i, True) for k in ("easy", "hard", "junk")}
    for key, arr in fields.items():
        if n_db is not None and arr.size and arr.max() >= n_db:
            raise EvaluationError(f"query {i} {key!r} index {arr.max()} is past the {n_db}-image database")
    bbx = entry.get("bbx")
    box = None
    if bbx is not None:
        b = np.asarray(bbx, dtype=np.float64).ravel()
        if b.size != 4:
            raise EvaluationError(f"query {i} bbx must have 4 numbers (x1, y1, x2, y2), got {b.size}")
        box = (float(b[0]), float(b[1]), float(b[2]), float(b[3]))
    return RevisitedQuery(fields["easy"], fields["hard"], fields["junk"], box)


def load_revisited_gnd(path: str | Path) -> RevisitedGroundTruth:
    """Read an official Revisited Oxford/Paris ground-truth pickle, safely (no arbitrary classes)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            cfg = _RestrictedUnpickler(f, str(path)).load()
    except EvaluationError:
        raise
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise EvaluationError(f"{path}: cannot read the ground-truth pickle: {exc}") from exc
    if (
        not isinstance(cfg, Mapping)
        or not {"imlist", "qimlist", "gnd"} <= set(cfg)
        or not all(isinstance(cfg[k], (list, tuple)) for k in ("imlist", "qimlist", "gnd"))
    ):
        raise EvaluationError(
            f"{path}: expected a dict with lists imlist, qimlist, gnd (the gnd_roxford5k.pkl format)"
        )
    imlist, qimlist = [str(s) for s in cfg["imlist"]], [str(s) for s in cfg["qimlist"]]
    if len(cfg["gnd"]) != len(qimlist):
        raise EvaluationError(f"{path}: {len(cfg['gnd'])} gnd entries for {len(qimlist)} queries")
    queries = [_revisited_query(e, i, len(imlist)) for i, e in enumerate(cfg["gnd"])]
    return RevisitedGroundTruth(imlist=imlist, qimlist=qimlist, queries=queries)


def evaluate_revisited(
    ranks: npt.ArrayLike,
    gnd: RevisitedGroundTruth | Sequence[Mapping[str, Any]],
    ks: Iterable[int] = (1, 5, 10),
) -> dict[str, EvalResult]:
    """Easy / Medium / Hard results (keys ``"easy"``, ``"medium"``, ``"hard"``) of ``ranks``
    (n_queries, n_ranked), with trapezoid AP and the official capped precision@k."""
    if isinstance(gnd, RevisitedGroundTruth):
        queries, n_db = gnd.queries, len(gnd.imlist)
    else:
        queries, n_db = [_revisited_query(e, i, None) for i, e in enumerate(gnd)], None
    arr = _rank_matrix(ranks, len(queries))
    if n_db is not None and arr.size and arr.max() >= n_db:
        raise EvaluationError(f"ranks holds index {arr.max()} but the database has {n_db} images")
    ks = tuple(ks)
    return {
        name: mean_average_precision(
            arr,
            _revisited_setup(queries, name),
            interpolation="trapezoid",
            ks=ks,
            cap_k_at_last_positive=True,
        )
        for name in REVISITED_SETUPS
    }


# --------------------------------------------------------------------------- folder-per-class ground truth
@dataclass(frozen=True)
class FolderDataset:
    """Images of ``root/<class>/<image>`` (label = class) then distractors (label ``None``)."""

    paths: list[Path]
    labels: list[str | None]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        (
            p
            for p in folder.iterdir()
            if not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        ),
        key=lambda p: p.name,
    )


def folder_dataset(root: str | Path, distractor_dirs: Iterable[str | Path] = ()) -> FolderDataset:
    """Scan ``root/<class>/<image>`` (sorted, hidden entries skipped) plus flat distractor folders."""
    root = Path(root)
    if not root.is_dir():
        raise EvaluationError(
            f"{root} is not a directory; expected a folder of class folders root/<class>/<image>"
        )
    extra = [Path(d) for d in distractor_dirs]
    for d in extra:
        if not d.is_dir():
            raise EvaluationError(f"distractor folder {d} is not a directory")
    extra_resolved = {d.resolve() for d in extra}
    paths: list[Path] = []
    labels: list[str | None] = []
    classes: list[str] = []
    for class_dir in sorted(root.iterdir(), key=lambda p: p.name):
        if class_dir.name.startswith(".") or not class_dir.is_dir() or class_dir.resolve() in extra_resolved:
            continue
        images = _images_in(class_dir)
        if not images:
            log.warning("class folder %s holds no images; ignored", class_dir)
            continue
        classes.append(class_dir.name)
        paths += images
        labels += [class_dir.name] * len(images)
    if not classes:
        raise EvaluationError(
            f"{root} has no class folder with images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    for d in extra:
        images = _images_in(d)
        paths += images
        labels += [None] * len(images)
    if len({p.resolve() for p in paths}) != len(paths):
        raise EvaluationError(
            "an image is listed twice: a distractor folder is given twice or is a class folder"
        )
    return FolderDataset(paths=paths, labels=labels, classes=classes)


def _query_indices(labels: Sequence[str | None], query_indices: Iterable[int] | None) -> IntArray:
    if query_indices is None:
        return np.asarray([i for i, lab in enumerate(labels) if lab is not None], dtype=np.int64)
    q = _index_array(np.asarray(list(query_indices)), "query_indices")
    if q.size and q.max() >= len(labels):
        raise EvaluationError(f"query index {q.max()} is past the {len(labels)} labelled images")
    distractors = [int(i) for i in q if labels[i] is None]
    if distractors:
        raise EvaluationError(f"images {distractors[:5]} are distractors (label None) and cannot be queries")
    return q


def class_ground_truth(
    labels: Sequence[str | None], query_indices: Iterable[int] | None = None
) -> list[dict[str, IntArray]]:
    """Per query: ok = every other image of its class, junk = the query itself (it is in the database).

    ``query_indices`` defaults to every labelled image; distractors (label ``None``) are never queries.
    """
    queries = _query_indices(labels, query_indices)
    groups: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        if lab is not None:
            groups.setdefault(lab, []).append(i)
    members = {lab: np.asarray(idx, dtype=np.int64) for lab, idx in groups.items()}
    out = []
    for q in queries.tolist():
        same = members[cast(str, labels[q])]  # a query's label is never None (checked above)
        out.append({"ok": same[same != q], "junk": np.asarray([q], dtype=np.int64)})
    return out


# --------------------------------------------------------------------------- exact ranking
def _vectors(x: npt.ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(x)
    numeric = np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    if arr.ndim != 2 or not numeric:
        raise EvaluationError(
            f"{what} must be a 2-D numeric array (n, d), got shape {arr.shape} dtype {arr.dtype}"
        )
    if not np.isfinite(arr).all():
        raise EvaluationError(f"{what} holds NaN or infinite values; check the descriptor extraction")
    return arr


def _top_stable(sims: np.ndarray, k: int) -> IntArray:
    """Indices of the k largest of each row, descending, ties by ascending index."""
    neg = -sims
    if k == sims.shape[1]:
        return np.argsort(neg, axis=1, kind="stable").astype(np.int64, copy=False)
    kth = np.partition(neg, k - 1, axis=1)[:, k - 1]
    out = np.empty((sims.shape[0], k), dtype=np.int64)
    for r in range(sims.shape[0]):
        cand = np.flatnonzero(neg[r] <= kth[r])  # every item at least as good as the k-th, index order
        out[r] = cand[np.argsort(neg[r, cand], kind="stable")[:k]]
    return out


def rank_by_similarity(
    query_vecs: npt.ArrayLike,
    db_vecs: npt.ArrayLike,
    top: int | None = None,
    *,
    chunk_elements: int = _CHUNK_ELEMENTS,
) -> IntArray:
    """Exact inner-product ranking: (n_queries, min(top, n_db)) int64 db indices, best first.

    Ties keep the lower database index first. Queries go through in chunks of about
    ``chunk_elements`` similarities, so memory beyond the output stays bounded.
    """
    q, db = _vectors(query_vecs, "query_vecs"), _vectors(db_vecs, "db_vecs")
    if q.shape[1] != db.shape[1]:
        raise EvaluationError(f"query_vecs have dimension {q.shape[1]} but db_vecs {db.shape[1]}")
    if db.shape[0] == 0:
        raise EvaluationError("db_vecs is empty: nothing to rank")
    k = db.shape[0] if top is None else min(_check_k(top), db.shape[0])
    dtype = np.result_type(q.dtype, db.dtype, np.float32)
    q, db_t = q.astype(dtype, copy=False), np.ascontiguousarray(db.astype(dtype, copy=False).T)
    out = np.empty((q.shape[0], k), dtype=np.int64)
    step = max(1, chunk_elements // db.shape[0])
    for s in range(0, q.shape[0], step):
        out[s : s + step] = _top_stable(q[s : s + step] @ db_t, k)
    return out


def evaluate_descriptors(
    vectors: npt.ArrayLike,
    labels: Sequence[str | None],
    *,
    query_indices: Iterable[int] | None = None,
    ks: Iterable[int] = (1, 5, 10),
    interpolation: Interpolation = "step",
    chunk_elements: int = _CHUNK_ELEMENTS,
) -> EvalResult:
    """Each labelled image (or each of ``query_indices``) queried against all the others.

    Positives are the other images of the query's class; the query itself is junk; distractors
    (label ``None``) are never queries and never relevant. Classes of one image are skipped.
    """
    vecs = _vectors(vectors, "vectors")
    if len(labels) != vecs.shape[0]:
        raise EvaluationError(f"{vecs.shape[0]} vectors but {len(labels)} labels")
    queries = _query_indices(labels, query_indices)
    gnd = class_ground_truth(labels, queries)
    acc = _Accumulator(interpolation, ks, False)
    step = max(1, chunk_elements // max(vecs.shape[0], 1))
    for s in range(0, queries.size, step):
        ranks = rank_by_similarity(vecs[queries[s : s + step]], vecs, chunk_elements=chunk_elements)
        for row, g in zip(ranks, gnd[s : s + step], strict=True):
            acc.add(row, g["ok"], g["junk"])
    return acc.result()


def describe_all(extractor: Extractor, sources: Sequence[Any], *, desc: str = "describing") -> np.ndarray:
    """Descriptors ``(n, dim)`` of ``sources`` (paths, bytes or RGB arrays) in input order, with
    :class:`~retrieval.progress.Progress` (a bar on a terminal, log lines otherwise).

    Evaluation needs every image: the first one that cannot be described raises
    :class:`EvaluationError` naming it.
    """
    from retrieval.models.extract import ExtractItem
    from retrieval.progress import Progress

    out = np.zeros((len(sources), extractor.meta.dim), dtype=np.float32)
    with Progress(len(sources), desc=desc, unit="images", logger=log) as progress:
        for res in extractor.iter_extract(ExtractItem(i, src) for i, src in enumerate(sources)):
            if not res.ok or res.descriptor is None:
                src = sources[int(res.key)]  # type: ignore[call-overload]
                name = str(src) if isinstance(src, (str, Path)) else f"image #{res.key}"
                raise EvaluationError(f"cannot evaluate: {name}: {res.error}; fix or remove the file")
            out[int(res.key)] = res.descriptor  # type: ignore[call-overload]
            progress.update()
    return out
