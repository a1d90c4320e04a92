"""Tests of retrieval.evaluate: hand-worked examples and slow float64 references."""

from __future__ import annotations

import os
import pickle
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.errors import EvaluationError, UnknownNameError
from retrieval.evaluate import (
    EvalResult,
    average_precision,
    class_ground_truth,
    evaluate_descriptors,
    evaluate_revisited,
    folder_dataset,
    load_revisited_gnd,
    mean_average_precision,
    precision_at_k,
    rank_by_similarity,
    recall_at_k,
)

SHARED_DATA = Path("/work/shared/data")


# --------------------------------------------------------------------------- slow references
def ref_filtered(ranked: list[int], junk: set[int]) -> list[int]:
    return [x for x in ranked if x not in junk]


def ref_step_ap(ranked: list[int], ok: set[int], junk: set[int]) -> float:
    """Mean over every positive of the precision at its rank (0 when never retrieved)."""
    kept = ref_filtered(ranked, junk)
    total = 0.0
    for p in ok:
        if p in kept:
            r = kept.index(p)
            total += sum(1 for x in kept[: r + 1] if x in ok) / (r + 1)
    return total / len(ok)


def ref_official_positions(ranked: list[int], ok: set[int], junk: set[int]) -> list[int]:
    """Positions as the Revisited code computes them: each positive moved up by the junk before it."""
    pos = [i for i, x in enumerate(ranked) if x in ok]
    jpos = [i for i, x in enumerate(ranked) if x in junk]
    return [p - sum(1 for j in jpos if j < p) for p in pos]


def ref_trapezoid_ap(ranked: list[int], ok: set[int], junk: set[int]) -> float:
    """Oxford/Paris trapezoid rule: area under the PR curve, one trapezoid per positive."""
    ap = 0.0
    for n_before, r in enumerate(ref_official_positions(ranked, ok, junk)):
        prec_left = 1.0 if r == 0 else n_before / r
        prec_right = (n_before + 1) / (r + 1)
        ap += (prec_left + prec_right) / 2.0 * (1.0 / len(ok))
    return ap


def ref_official_precision(ranked: list[int], ok: set[int], junk: set[int], k: int) -> float:
    one_based = [r + 1 for r in ref_official_positions(ranked, ok, junk)]
    kq = min(max(one_based), k) if one_based else k
    return sum(1 for r in one_based if r <= kq) / kq


def random_query(rng: np.random.Generator, n_db: int) -> tuple[list[int], set[int], set[int]]:
    perm = rng.permutation(n_db)
    n_ranked = int(rng.integers(1, n_db + 1))  # often truncated
    n_ok = int(rng.integers(1, max(2, n_db // 3)))
    n_junk = int(rng.integers(0, max(1, n_db // 4)))
    ok = {int(x) for x in perm[:n_ok]}
    junk = {int(x) for x in perm[n_ok : n_ok + n_junk]}
    return [int(x) for x in rng.permutation(n_db)[:n_ranked]], ok, junk


# --------------------------------------------------------------------------- hand-worked AP
def test_ap_hand_worked_truncated_with_missing_positive() -> None:
    # ranked [5, 3, 7, 1, 9], positives {3, 1, 8}; 8 never retrieved.  Positives at 0-based ranks 1, 3.
    # step:      (1/2 + 2/4) / 3 = 1/3
    # trapezoid: rank 1: (0/1 + 1/2)/2 = 1/4 ; rank 3: (1/3 + 2/4)/2 = 5/12 ; (3/12 + 5/12)/3 = 2/9
    ranked = np.array([5, 3, 7, 1, 9])
    assert average_precision(ranked, {3, 1, 8}) == pytest.approx(1 / 3, abs=1e-15)
    assert average_precision(ranked, {3, 1, 8}, interpolation="trapezoid") == pytest.approx(2 / 9, abs=1e-15)


def test_ap_hand_worked_with_junk() -> None:
    # ranked [4, 2, 0, 6, 8], positives {0, 8}, junk {4, 6}: without junk -> [2, 0, 8], positives at 1, 2.
    # step:      (1/2 + 2/3) / 2 = 7/12
    # trapezoid: rank 1: (0/1 + 1/2)/2 = 1/4 ; rank 2: (1/2 + 2/3)/2 = 7/12 ; (3/12 + 7/12)/2 = 5/12
    ranked = [4, 2, 0, 6, 8]
    assert average_precision(ranked, [0, 8], [4, 6]) == pytest.approx(7 / 12, abs=1e-15)
    assert average_precision(ranked, [0, 8], [4, 6], interpolation="trapezoid") == pytest.approx(
        5 / 12, abs=1e-15
    )
    # Without removing junk the same ranking scores lower: positives at 2, 4 -> (1/3 + 2/5)/2 = 11/30.
    assert average_precision(ranked, [0, 8]) == pytest.approx(11 / 30, abs=1e-15)


def test_ap_edge_cases() -> None:
    # Positive first: step 1/1 = 1 ; trapezoid (1 + 1/1)/2 = 1.
    assert average_precision([1, 2], [1], interpolation="trapezoid") == 1.0
    assert average_precision([1, 2], [1]) == 1.0
    # Only one of two positives retrieved, at the top: 1/2 either way.
    assert average_precision([7], [7, 9]) == 0.5
    assert average_precision([7], [7, 9], interpolation="trapezoid") == 0.5
    # Nothing retrieved, FAISS padding (-1) is never relevant.
    assert average_precision([3, -1, -1], [5]) == 0.0
    assert average_precision(np.array([], dtype=np.int64), [5]) == 0.0


def test_ap_errors() -> None:
    with pytest.raises(EvaluationError, match="no positives"):
        average_precision([1, 2, 3], [])
    with pytest.raises(EvaluationError, match="both positive and junk"):
        average_precision([1, 2, 3], [1], [1])
    with pytest.raises(EvaluationError, match="more than once"):
        average_precision([1, 2, 1], [1])
    with pytest.raises(EvaluationError, match="integer"):
        average_precision([1.0, 2.0], [1])
    with pytest.raises(UnknownNameError, match="step, trapezoid"):
        average_precision([1, 2], [1], interpolation="eleven-point")  # type: ignore[arg-type]


def test_ap_matches_slow_references_on_random_rankings() -> None:
    rng = np.random.default_rng(1234)
    for _ in range(300):
        n_db = int(rng.integers(2, 40))
        ranked, ok, junk = random_query(rng, n_db)
        arr = np.asarray(ranked, dtype=np.int64)
        got_t = average_precision(arr, ok, junk, interpolation="trapezoid")
        assert got_t == pytest.approx(ref_trapezoid_ap(ranked, ok, junk), rel=1e-12, abs=1e-15)
        assert average_precision(arr, ok, junk) == pytest.approx(
            ref_step_ap(ranked, ok, junk), rel=1e-12, abs=1e-15
        )


def test_trapezoid_matches_exact_rational_arithmetic() -> None:
    # Fractions, not floats: the trapezoid AP of positives at ranks 0, 2, 7 among 4 positives.
    pos = [0, 2, 7]
    exact = Fraction(0)
    for j, r in enumerate(pos):
        left = Fraction(1) if r == 0 else Fraction(j, r)
        exact += (left + Fraction(j + 1, r + 1)) / 2 / 4
    ranked = [100 + i for i in range(10)]
    for r, item in zip(pos, (1, 2, 3), strict=True):
        ranked[r] = item
    assert average_precision(ranked, [1, 2, 3, 4], interpolation="trapezoid") == pytest.approx(
        float(exact), abs=1e-15
    )


# --------------------------------------------------------------------------- precision / recall at k
def test_precision_and_recall_at_k_by_hand() -> None:
    # ranked [4, 2, 0, 6, 8], positives {0, 8}, junk {4, 6} -> [2, 0, 8]
    ranked = [4, 2, 0, 6, 8]
    assert precision_at_k(ranked, [0, 8], [4, 6], k=1) == 0.0  # [2]
    assert precision_at_k(ranked, [0, 8], [4, 6], k=2) == 0.5  # [2, 0]
    assert precision_at_k(ranked, [0, 8], [4, 6], k=3) == pytest.approx(2 / 3)  # [2, 0, 8]
    assert precision_at_k(ranked, [0, 8], [4, 6], k=5) == pytest.approx(2 / 5)  # only 3 left: still / 5
    assert recall_at_k(ranked, [0, 8], [4, 6], k=1) == 0.0
    assert recall_at_k(ranked, [0, 8], [4, 6], k=2) == 1.0  # hit@2: one positive is enough
    assert recall_at_k(ranked, [0, 8], k=2) == 0.0  # junk not removed: [4, 2]
    with pytest.raises(EvaluationError, match="positive integer"):
        precision_at_k(ranked, [0], k=0)


def test_mean_average_precision_by_hand() -> None:
    ranks = np.array([[4, 2, 0, 6, 8], [1, 0, 2, 3, 4], [0, 1, 2, 3, 4]])
    gnd: list[Any] = [
        {"ok": [0, 8], "junk": [4, 6]},  # AP 7/12 (above); P@1 0, P@5 2/5; hit@1 0, hit@5 1
        {"ok": np.array([1])},  # AP 1;                 P@1 1, P@5 1/5; hit@1 1, hit@5 1
        {"ok": []},  # no positives: skipped
    ]
    res = mean_average_precision(ranks, gnd, ks=(5, 1))
    assert isinstance(res, EvalResult)
    assert res.map == pytest.approx((7 / 12 + 1) / 2)
    assert res.aps[:2] == pytest.approx([7 / 12, 1.0]) and np.isnan(res.aps[2])
    assert res.mp_at_k == pytest.approx({1: 0.5, 5: (2 / 5 + 1 / 5) / 2})
    assert list(res.mp_at_k) == [1, 5]
    assert res.recall_at_k == pytest.approx({1: 0.5, 5: 1.0})
    assert (res.n_queries, res.n_skipped) == (3, 1)
    assert "mAP 0.7917" in res.summary()


def test_mean_average_precision_errors() -> None:
    with pytest.raises(EvaluationError, match="transpose"):
        mean_average_precision(np.zeros((5, 2), dtype=np.int64), [{"ok": [1]}, {"ok": [2]}])
    with pytest.raises(EvaluationError, match="row 1"):
        mean_average_precision(np.array([[0, 1], [2, 2]]), [{"ok": [1]}, {"ok": [2]}])
    with pytest.raises(EvaluationError, match="none of the 1 queries"):
        mean_average_precision(np.array([[0, 1]]), [{"ok": []}])
    with pytest.raises(EvaluationError, match="no 'ok'"):
        mean_average_precision(np.array([[0, 1]]), [{"junk": [1]}])


# --------------------------------------------------------------------------- Revisited protocol
TINY_GND: dict[str, Any] = {
    "imlist": [f"db{i}" for i in range(6)],
    "qimlist": ["q0", "q1"],
    "gnd": [
        {"easy": np.array([0, 1]), "hard": [2], "junk": np.array([3]), "bbx": [1.0, 2.0, 30.5, 40.0]},
        {"easy": [], "hard": np.array([4], dtype=np.int64), "junk": [np.int64(5)], "bbx": None},
    ],
}
TINY_RANKS = np.array([[2, 0, 3, 4, 1, 5], [0, 4, 1, 2, 3, 5]])


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_revisited_setups_by_hand(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "gnd_tiny.pkl"
    path.write_bytes(pickle.dumps(TINY_GND, protocol=protocol))
    gnd = load_revisited_gnd(path)
    assert gnd.qimlist == ["q0", "q1"] and len(gnd.imlist) == 6
    assert gnd.queries[0].bbx == (1.0, 2.0, 30.5, 40.0) and gnd.queries[1].bbx is None
    res = evaluate_revisited(TINY_RANKS, gnd, ks=(1, 5))
    # Easy   q0: ok {0,1}, junk {3,2} -> [0,4,1,5], positives at 0, 2:
    #            (1+1)/2 + (1/2+2/3)/2 = 1 + 7/12 -> /2 = 19/24 ; q1 has no easy image: skipped.
    assert res["easy"].map == pytest.approx(19 / 24) and res["easy"].n_skipped == 1
    # Medium q0: ok {0,1,2}, junk {3} -> [2,0,4,1,5], positives at 0, 1, 3:
    #            1 + (1/1+2/2)/2 + (2/3+3/4)/2 = 2 + 17/24 -> /3 = 65/72
    #        q1: ok {4}, junk {5} -> [0,4,1,2,3], positive at 1: (0+1/2)/2 = 1/4. mAP (65/72+1/4)/2 = 83/144
    assert res["medium"].map == pytest.approx(83 / 144) and res["medium"].n_skipped == 0
    assert res["medium"].aps == pytest.approx([65 / 72, 1 / 4])
    # Hard   q0: ok {2}, junk {3,0,1} -> [2,4,5]: AP 1 ; q1: as medium, 1/4 -> mAP 5/8
    assert res["hard"].map == pytest.approx(5 / 8)
    # Official precision@k divides by min(k, 1-based rank of the last positive):
    # medium k=1: q0 1/1, q1 0/1 -> 1/2 ; k=5: q0 min(5,4)=4 -> 3/4, q1 min(5,2)=2 -> 1/2 -> 5/8
    assert res["medium"].mp_at_k == pytest.approx({1: 0.5, 5: 5 / 8})
    # The plain mP@5 would be (3/5 + 1/5)/2 = 2/5.
    plain = mean_average_precision(TINY_RANKS, gnd.setup("medium"), interpolation="trapezoid", ks=(5,))
    assert plain.mp_at_k[5] == pytest.approx(2 / 5) and plain.map == res["medium"].map
    # The same numbers from the raw gnd list.
    assert evaluate_revisited(TINY_RANKS, TINY_GND["gnd"], ks=(1, 5))["hard"].map == pytest.approx(5 / 8)


def test_revisited_matches_slow_official_reference() -> None:
    rng = np.random.default_rng(7)
    n_db, n_q, ks = 30, 25, (1, 5, 10)
    queries = []
    for _ in range(n_q):
        perm = rng.permutation(n_db)
        a, b, c = sorted(int(x) for x in rng.integers(0, 12, size=3))
        queries.append({"easy": perm[:a], "hard": perm[a:b], "junk": perm[b:c]})
    ranks = np.stack([rng.permutation(n_db) for _ in range(n_q)])
    res = evaluate_revisited(ranks, queries, ks=ks)
    setups = {"easy": (("easy",), ("junk", "hard")), "medium": (("easy", "hard"), ("junk",))}
    setups["hard"] = (("hard",), ("junk", "easy"))
    for name, (ok_f, junk_f) in setups.items():
        aps, precs = [], []
        for q, row in zip(queries, ranks.tolist(), strict=True):
            ok = {int(x) for f in ok_f for x in q[f]}
            junk = {int(x) for f in junk_f for x in q[f]}
            if ok:
                aps.append(ref_trapezoid_ap(row, ok, junk))
                precs.append([ref_official_precision(row, ok, junk, k) for k in ks])
        assert res[name].map == pytest.approx(np.mean(aps), rel=1e-12)
        assert res[name].n_skipped == n_q - len(aps)
        want = np.mean(precs, axis=0)
        assert [res[name].mp_at_k[k] for k in ks] == pytest.approx(want.tolist(), rel=1e-12)


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


def test_restricted_unpickler_refuses_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": _RunsCommand(f"touch {marker}")}))
    with pytest.raises(EvaluationError, match=r"system.*refusing"):
        load_revisited_gnd(evil)
    # Hand-written protocol-0 pickle naming os.system directly.
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(EvaluationError, match=r"os\.system"):
        load_revisited_gnd(evil)
    assert not marker.exists()


def test_load_revisited_gnd_rejects_malformed(tmp_path: Path) -> None:
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(EvaluationError, match="imlist, qimlist, gnd"):
        load_revisited_gnd(path)
    bad = dict(TINY_GND, gnd=[{"easy": [9], "hard": [], "junk": []}, TINY_GND["gnd"][1]])
    path.write_bytes(pickle.dumps(bad))
    with pytest.raises(EvaluationError, match="past the 6-image database"):
        load_revisited_gnd(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(EvaluationError, match="cannot read"):
        load_revisited_gnd(path)
    with pytest.raises(EvaluationError, match="cannot read"):
        load_revisited_gnd(tmp_path / "missing.pkl")


# --------------------------------------------------------------------------- folder datasets
def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folder_dataset(tmp_path: Path) -> None:
    root = tmp_path / "classes"
    b1, b0 = _touch(root / "bird" / "b.PNG"), _touch(root / "bird" / "a.jpg")
    c0 = _touch(root / "cat" / "z.JPEG")
    _touch(root / "cat" / ".hidden.jpg")
    _touch(root / "cat" / "notes.txt")
    _touch(root / "cat" / "sub" / "deep.jpg")  # only root/<class>/<image> is scanned
    _touch(root / ".git" / "x.jpg")
    _touch(root / "empty" / "readme.md")
    _touch(root / "loose.jpg")
    d0 = _touch(tmp_path / "distract" / "d.webp")
    _touch(tmp_path / "distract" / "d.xcf")
    ds = folder_dataset(root, [tmp_path / "distract"])
    assert ds.paths == [b0, b1, c0, d0]
    assert ds.labels == ["bird", "bird", "cat", None]
    assert ds.classes == ["bird", "cat"] and len(ds) == 4
    # A distractor folder inside root is not also a class.
    _touch(root / "zz_distract" / "e.gif")
    ds2 = folder_dataset(root, [root / "zz_distract"])
    assert ds2.classes == ["bird", "cat"] and ds2.labels[-1] is None
    with pytest.raises(EvaluationError, match="listed twice"):
        folder_dataset(root, [tmp_path / "distract", tmp_path / "distract"])
    with pytest.raises(EvaluationError, match="not a directory"):
        folder_dataset(tmp_path / "nope")
    with pytest.raises(EvaluationError, match="no class folder"):
        folder_dataset(tmp_path / "distract")


def test_folder_dataset_on_real_photos() -> None:
    ds = folder_dataset(SHARED_DATA / "caltech101-half", [SHARED_DATA / "caltech101-distractors"])
    assert len(ds.classes) == 50 and len(ds) == 4020 + 467
    assert sum(lab is None for lab in ds.labels) == 467
    assert all(p.is_file() for p in ds.paths[::97])
    assert ds == folder_dataset(SHARED_DATA / "caltech101-half", [SHARED_DATA / "caltech101-distractors"])


def test_class_ground_truth() -> None:
    labels = ["a", "b", None, "a", "b", "a", "c"]
    gnd = class_ground_truth(labels, [0, 4, 6])
    assert gnd[0]["ok"].tolist() == [3, 5] and gnd[0]["junk"].tolist() == [0]
    assert gnd[1]["ok"].tolist() == [1] and gnd[1]["junk"].tolist() == [4]
    assert gnd[2]["ok"].tolist() == [] and gnd[2]["junk"].tolist() == [6]
    assert len(class_ground_truth(labels)) == 6  # every labelled image
    with pytest.raises(EvaluationError, match="distractors"):
        class_ground_truth(labels, [2])
    with pytest.raises(EvaluationError, match="past the 7"):
        class_ground_truth(labels, [7])


# --------------------------------------------------------------------------- ranking
def test_rank_by_similarity_vs_argsort() -> None:
    rng = np.random.default_rng(3)
    # Small integer vectors: exact float arithmetic and many ties (ties go to the lower index).
    q = rng.integers(-2, 3, size=(37, 4)).astype(np.float64)
    db = rng.integers(-2, 3, size=(53, 4)).astype(np.float64)
    want = np.argsort(-(q @ db.T), axis=1, kind="stable")
    for chunk in (1, 100, 1 << 22):  # 1 query, a few queries, everything per chunk
        np.testing.assert_array_equal(rank_by_similarity(q, db, chunk_elements=chunk), want)
        for top in (1, 7, 53, 80):
            got = rank_by_similarity(q, db, top=top, chunk_elements=chunk)
            np.testing.assert_array_equal(got, want[:, : min(top, 53)])
    qf, dbf = (
        rng.standard_normal((20, 16)).astype(np.float32),
        rng.standard_normal((300, 16)).astype(np.float32),
    )
    got = rank_by_similarity(qf, dbf, top=10, chunk_elements=1000)
    ref = np.argsort(-(qf.astype(np.float64) @ dbf.astype(np.float64).T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(EvaluationError, match="dimension"):
        rank_by_similarity(q, db[:, :3])
    with pytest.raises(EvaluationError, match="NaN"):
        rank_by_similarity(np.full((1, 4), np.nan), db)


# --------------------------------------------------------------------------- evaluate_descriptors
def _unit(deg: float) -> list[float]:
    return [float(np.cos(np.radians(deg))), float(np.sin(np.radians(deg)))]


def test_evaluate_descriptors_known_map() -> None:
    # Unit vectors at angles; inner product = cos(angle difference), so nearer angle = better.
    # a0=0°, a1=20°, b0=35°, b1=65°, distractor d=10°; each query also finds itself first (junk).
    #   a0: d(10) a1(20) b0(35) b1(65)  -> positive a1 at 1: AP 1/2
    #   a1: d(10) b0(15) a0(20) b1(45)  -> positive a0 at 2: AP 1/3
    #   b0: a1(15) d(25) b1(30) a0(35)  -> positive b1 at 2: AP 1/3
    #   b1: b0(30) a1(45) d(55) a0(65)  -> positive b0 at 0: AP 1
    # mAP = (1/2 + 1/3 + 1/3 + 1)/4 = 13/24 ; hit@1 = 1/4 ; mP@5 = 1/5 (one positive each, / 5)
    vecs = np.array([_unit(0), _unit(20), _unit(35), _unit(65), _unit(10)])
    labels = ["a", "a", "b", "b", None]
    res = evaluate_descriptors(vecs, labels, ks=(1, 5))
    assert res.map == pytest.approx(13 / 24)
    assert res.aps == pytest.approx([1 / 2, 1 / 3, 1 / 3, 1.0])
    assert res.recall_at_k == pytest.approx({1: 0.25, 5: 1.0})
    assert res.mp_at_k == pytest.approx({1: 0.25, 5: 0.2})
    assert (res.n_queries, res.n_skipped) == (4, 0)
    # Queries from a generator; one class of a single image is skipped, not an error.
    res2 = evaluate_descriptors(vecs, ["a", "a", "b", "c", None], query_indices=(i for i in (0, 3)))
    assert (res2.n_queries, res2.n_skipped, res2.map) == (2, 1, pytest.approx(1 / 2))


def test_evaluate_descriptors_equals_full_pipeline() -> None:
    rng = np.random.default_rng(11)
    labels: list[str | None] = [f"c{i % 7}" for i in range(140)] + [None] * 40
    centers = rng.standard_normal((7, 24))
    vecs = np.vstack([centers[i % 7] + 1.5 * rng.standard_normal(24) for i in range(140)])
    vecs = np.vstack([vecs, rng.standard_normal((40, 24))]).astype(np.float32)
    got = evaluate_descriptors(vecs, labels, chunk_elements=2000)  # several chunks of 11 queries
    queries = np.arange(140)
    ranks = rank_by_similarity(vecs[queries], vecs)
    want = mean_average_precision(ranks, class_ground_truth(labels, queries))
    assert got.map == pytest.approx(want.map, rel=1e-12) and 0.2 < got.map < 0.95
    np.testing.assert_allclose(got.aps, want.aps, rtol=1e-12)
    assert got.mp_at_k == want.mp_at_k and got.recall_at_k == want.recall_at_k
    trap = evaluate_descriptors(vecs, labels, interpolation="trapezoid")
    assert trap.map == pytest.approx(
        np.mean(
            [
                ref_trapezoid_ap(r, set(g["ok"].tolist()), set(g["junk"].tolist()))
                for r, g in zip(ranks.tolist(), class_ground_truth(labels, queries), strict=True)
            ]
        ),
        rel=1e-12,
    )
    with pytest.raises(EvaluationError, match="labels"):
        evaluate_descriptors(vecs, labels[:-1])
