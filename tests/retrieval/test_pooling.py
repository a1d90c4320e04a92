"""Pooling against slow, obvious float64 loop references; R-MAC grids against hand-worked grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from retrieval.errors import UnknownNameError
from retrieval.models import pooling as P


def _maps(seed: int = 0, shape: tuple[int, ...] = (2, 5, 7, 10)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 3


# ----------------------------------------------------------------------------- references


def ref_mac(x: np.ndarray) -> np.ndarray:
    b, c, h, w = x.shape
    out = np.full((b, c), -np.inf)
    for i in range(b):
        for k in range(c):
            for y in range(h):
                for z in range(w):
                    out[i, k] = max(out[i, k], x[i, k, y, z])
    return out


def ref_spoc(x: np.ndarray) -> np.ndarray:
    b, c, h, w = x.shape
    out = np.zeros((b, c))
    for i in range(b):
        for k in range(c):
            total = 0.0
            for y in range(h):
                for z in range(w):
                    total += x[i, k, y, z]
            out[i, k] = total / (h * w)
    return out


def ref_gem(x: np.ndarray, p: float) -> np.ndarray:
    b, c, h, w = x.shape
    out = np.zeros((b, c))
    for i in range(b):
        for k in range(c):
            total = 0.0
            for y in range(h):
                for z in range(w):
                    total += max(x[i, k, y, z], 1e-6) ** p
            out[i, k] = (total / (h * w)) ** (1 / p)
    return out


def ref_rmac(x: np.ndarray, regions: list[tuple[int, int, int, int]], proj: np.ndarray | None) -> np.ndarray:
    b, c = x.shape[:2]
    out = np.zeros((b, proj.shape[0] if proj is not None else c))
    for i in range(b):
        total = np.zeros(out.shape[1])
        for y0, x0, rh, rw in regions:
            v = np.array([max(x[i, k, y, z] for y in range(y0, y0 + rh) for z in range(x0, x0 + rw)) for k in range(c)])
            v = v / (math.sqrt(sum(t * t for t in v)) + 1e-6)
            if proj is not None:
                v = proj @ v
                v = v / (math.sqrt(sum(t * t for t in v)) + 1e-6)
            total += v
        out[i] = total / (math.sqrt(sum(t * t for t in total)) + 1e-6)
    return out


# ----------------------------------------------------------------------------- global poolings


def test_mac_spoc_gem_match_loops() -> None:
    x = _maps()
    xn = x.numpy()
    np.testing.assert_allclose(P.mac(x).numpy(), ref_mac(xn), rtol=0, atol=1e-12)
    np.testing.assert_allclose(P.spoc(x).numpy(), ref_spoc(xn), rtol=1e-12)
    for p in (1.0, 3.0, 7.5):
        np.testing.assert_allclose(P.gem(x, p).numpy(), ref_gem(xn, p), rtol=1e-10)
    # GeM limits: p = 1 is SPoC, large p tends to MAC
    np.testing.assert_allclose(P.gem(x, 1.0).numpy(), ref_spoc(xn), rtol=1e-10)
    # and GeM is bounded: mac * (1/n)^(1/p) <= gem <= mac, so it tends to MAC as p grows
    big = P.gem(x, 200.0).numpy()
    n = xn.shape[2] * xn.shape[3]
    assert (big <= ref_mac(xn) + 1e-9).all() and (big >= ref_mac(xn) * (1 / n) ** (1 / 200) - 1e-9).all()


def test_gem_gradcheck_on_p_and_input() -> None:
    x = _maps(1, (1, 3, 4, 5)).requires_grad_(True)
    p = torch.tensor([2.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(P.gem, (x, p), eps=1e-6, atol=1e-5)
    module = P.GeM(p=3.0).double()
    assert module.p.requires_grad
    out = module(x).sum()
    out.backward()
    assert module.p.grad is not None and torch.isfinite(module.p.grad).all()


def test_l2n() -> None:
    v = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    np.testing.assert_allclose(P.l2n(v).numpy(), [[0.6, 0.8], [0.0, 0.0]], atol=1e-6)


# ----------------------------------------------------------------------------- R-MAC grids


def test_grid_square_7x7() -> None:
    # m = 1 (square). L1: side 7 at 0. L2: side floor(14/3)=4, 2x2, step (7-4)/1=3 -> 0,3.
    # L3: side floor(14/4)=3, 3x3, step (7-3)/2=2 -> 0,2,4.
    expected = [(0, 0, 7, 7)]
    expected += [(y, x, 4, 4) for y in (0, 3) for x in (0, 3)]
    expected += [(y, x, 3, 3) for y in (0, 2, 4) for x in (0, 2, 4)]
    assert list(P.rmac_regions(7, 7)) == expected


def test_grid_landscape_7x10() -> None:
    # short 7, long 10. m=2: step 3, overlap (7-3)/7 = .571 (|.171| from .4); m=3: step 1.5,
    # overlap .786: m = 2. L1: side 7, 1 x 2, x starts 0,3.
    # L2: side 4, 2 x 3: y step 3 -> 0,3; x step (10-4)/2=3 -> 0,3,6.
    # L3: side 3, 3 x 4: y step 2 -> 0,2,4; x step 7/3=2.33 -> 0,2,4,7.
    expected = [(0, 0, 7, 7), (0, 3, 7, 7)]
    expected += [(y, x, 4, 4) for y in (0, 3) for x in (0, 3, 6)]
    expected += [(y, x, 3, 3) for y in (0, 2, 4) for x in (0, 2, 4, 7)]
    assert list(P.rmac_regions(7, 10)) == expected


def test_grid_portrait_is_the_transpose() -> None:
    land = P.rmac_regions(7, 10)
    port = P.rmac_regions(10, 7)
    assert sorted((x, y, w, h) for y, x, h, w in port) == sorted(land)


def test_grid_wide_4x16() -> None:
    # short 4, long 16: m=6 gives step 12/5=2.4, overlap (4-2.4)/4 = .4 exactly.
    # L1: side 4, x starts floor(i*2.4) = 0,2,4,7,9,12.
    # L2: side floor(8/3)=2, 2 x 7: y 0,2; x step 14/6=2.33 -> 0,2,4,7,9,11,14.
    # L3: side floor(8/4)=2, 3 x 8: y step 1 -> 0,1,2; x step 2 -> 0,2,...,14.
    expected = [(0, x, 4, 4) for x in (0, 2, 4, 7, 9, 12)]
    expected += [(y, x, 2, 2) for y in (0, 2) for x in (0, 2, 4, 7, 9, 11, 14)]
    expected += [(y, x, 2, 2) for y in (0, 1, 2) for x in range(0, 16, 2)]
    assert list(P.rmac_regions(4, 16)) == expected


def test_grid_tiny_maps() -> None:
    assert P.rmac_regions(1, 1) == ((0, 0, 1, 1),)
    # 1 x 5: L1 regions of side 1 (m = 7, starts deduplicated); L2, L3 would be empty
    assert P.rmac_regions(1, 5) == tuple((0, x, 1, 1) for x in range(5))
    with pytest.raises(ValueError):
        P.rmac_regions(0, 5)


@pytest.mark.parametrize("shape", [(7, 10), (10, 7), (6, 6), (4, 16), (13, 9), (2, 3)])
def test_regions_cover_the_map_and_fit(shape: tuple[int, int]) -> None:
    h, w = shape
    covered = np.zeros(shape, dtype=bool)
    for y0, x0, rh, rw in P.rmac_regions(h, w):
        assert rh == rw and y0 >= 0 and x0 >= 0 and y0 + rh <= h and x0 + rw <= w
        covered[y0 : y0 + rh, x0 : x0 + rw] = True
    assert covered.all()


# ----------------------------------------------------------------------------- R-MAC values


@pytest.mark.parametrize("shape", [(2, 4, 7, 10), (1, 3, 9, 6), (2, 3, 5, 5), (1, 2, 1, 4)])
def test_region_mac_and_rmac_match_loops(shape: tuple[int, int, int, int]) -> None:
    x = _maps(2, shape)
    regions = list(P.rmac_regions(shape[2], shape[3]))
    fast = P.region_mac(x, regions).numpy()
    for r, (y0, x0, rh, rw) in enumerate(regions):
        np.testing.assert_array_equal(fast[:, r, :], ref_mac(x[:, :, y0 : y0 + rh, x0 : x0 + rw].numpy()))
    np.testing.assert_allclose(P.rmac(x).numpy(), ref_rmac(x.numpy(), regions, None), atol=1e-10)


def test_rmac_with_projection_matches_loop() -> None:
    x = _maps(3, (2, 4, 6, 9))
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(3, 4, generator=g, dtype=torch.float64)
    regions = list(P.rmac_regions(6, 9))
    got = P.rmac(x, projection=lambda v: v @ proj.T).numpy()
    np.testing.assert_allclose(got, ref_rmac(x.numpy(), regions, proj.numpy()), atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_modules_are_twins_of_functions() -> None:
    x = _maps(4)
    assert torch.equal(P.create_pooling("mac")(x), P.mac(x))
    assert torch.equal(P.create_pooling("spoc")(x), P.spoc(x))
    assert torch.allclose(P.create_pooling("gem", p=3.0).double()(x), P.gem(x, 3.0))
    assert torch.equal(P.create_pooling("rmac", levels=2)(x), P.rmac(x, levels=2))
    assert torch.allclose(P.create_pooling("rgem", p=4.0, pr=2.0, size=3).double()(x), P.regional_gem(x, 4.0, 2.0, 3))
    with pytest.raises(UnknownNameError, match="valid poolings: gem, mac, rgem, rmac, spoc"):
        P.create_pooling("avg")


# ----------------------------------------------------------------------------- boxes


def test_feature_box_mapping() -> None:
    # stride 32 on a 10 x 16 map (320 x 512 input)
    assert P.feature_box((0, 0, 512, 320), 32, 10, 16) == (0, 0, 10, 16)
    assert P.feature_box((40, 70, 100, 130), 32, 10, 16) == (2, 1, 5, 4)  # y 70/32->2 .. 130/32->5
    assert P.feature_box((500, 310, 512, 320), 32, 10, 16) == (9, 15, 10, 16)
    assert P.feature_box((3, 3, 4, 4), 32, 10, 16) == (0, 0, 1, 1)  # tiny box keeps one cell
    assert P.feature_box((-50, -50, 9999, 9999), 32, 10, 16) == (0, 0, 10, 16)  # clipped


def test_pool_boxes_uses_the_same_head() -> None:
    fmap = _maps(5, (1, 4, 10, 16))[0]
    whole = P.pool_boxes(fmap, [(0, 0, 512, 320)], 32, P.rmac)
    assert torch.allclose(whole, P.rmac(fmap[None]))
    part = P.pool_boxes(fmap, [(64, 32, 256, 224), (0, 0, 31, 31)], 32, P.rmac)
    assert part.shape == (2, 4)
    assert torch.allclose(part[0], P.rmac(fmap[None, :, 1:7, 2:8])[0])
    assert torch.allclose(part[1], P.l2n(fmap[:, 0, 0])[None][0], atol=1e-6)


# ----------------------------------------------------------------------------- SuperGlobal options


def ref_relu_plus(x: np.ndarray, eps: float) -> np.ndarray:
    out = x.copy()
    for idx in np.ndindex(*x.shape):
        out[idx] = max(x[idx], eps)
    return out


def ref_local_gem(x: np.ndarray, p: float, size: int) -> np.ndarray:
    """Each cell: power mean of the cells of its size x size window that lie on the map."""
    b, c, h, w = x.shape
    r = size // 2
    out = np.zeros_like(x)
    for i in range(b):
        for k in range(c):
            for y in range(h):
                for z in range(w):
                    vals = [
                        max(x[i, k, yy, zz], 1e-6) ** p
                        for yy in range(y - r, y + r + 1)
                        for zz in range(z - r, z + r + 1)
                        if 0 <= yy < h and 0 <= zz < w
                    ]
                    out[i, k, y, z] = (sum(vals) / len(vals)) ** (1 / p)
    return out


def ref_scale_gem(v: np.ndarray, p: float) -> np.ndarray:
    """(S, B, D) -> (B, D): max over scales (p = inf) or the power mean of v - min(v) per sample."""
    s, b, d = v.shape
    out = np.zeros((b, d))
    for i in range(b):
        gamma = min(v[t, i, j] for t in range(s) for j in range(d))
        for j in range(d):
            if math.isinf(p):
                out[i, j] = max(v[t, i, j] for t in range(s))
            else:
                out[i, j] = (sum((v[t, i, j] - gamma) ** p for t in range(s)) / s) ** (1 / p) + gamma
    return out


def test_relu_plus_matches_loop() -> None:
    x = _maps(6, (2, 3, 4, 5)) - 1.0  # some activations below the floor, some negative
    for eps in (0.014, 0.5):
        np.testing.assert_array_equal(P.relu_plus(x, eps).numpy(), ref_relu_plus(x.numpy(), eps))
    assert torch.equal(P.ReLUPlus(0.5)(x), P.relu_plus(x, 0.5))
    with pytest.raises(ValueError, match="floor"):
        P.ReLUPlus(0.0)


@pytest.mark.parametrize("shape", [(2, 3, 7, 10), (1, 2, 1, 1), (1, 3, 2, 3), (1, 2, 9, 4)])
@pytest.mark.parametrize("size", [1, 3, 5])
def test_local_and_regional_gem_match_loops(shape: tuple[int, int, int, int], size: int) -> None:
    x = _maps(7, shape)
    xn = x.numpy()
    local = ref_local_gem(xn, 2.5, size)
    np.testing.assert_allclose(P.local_gem(x, 2.5, size).numpy(), local, rtol=1e-10)
    want = ref_gem((xn + local) / 2, 4.6)
    np.testing.assert_allclose(P.regional_gem(x, 4.6, 2.5, size).numpy(), want, rtol=1e-10)


def test_regional_gem_limits_and_window() -> None:
    x = _maps(8, (2, 3, 6, 8))
    # a 1-cell window averages each cell with itself: plain GeM
    np.testing.assert_allclose(P.regional_gem(x, 3.0, 2.5, 1).numpy(), P.gem(x, 3.0).numpy(), rtol=1e-12)
    # a constant map stays constant
    const = torch.full((1, 2, 5, 5), 0.7, dtype=torch.float64)
    np.testing.assert_allclose(P.regional_gem(const, 4.6).numpy(), 0.7, rtol=1e-12)
    for bad in (0, 2, 4.5):
        with pytest.raises(ValueError, match="odd"):
            P.local_gem(x, 2.5, bad)  # type: ignore[arg-type]
    module = P.RegionalGeM(p=4.6).double()
    assert isinstance(module, P.GeM) and module.p.requires_grad and (module.pr, module.size) == (2.5, 5)
    module(x.requires_grad_(True)).sum().backward()
    assert module.p.grad is not None and torch.isfinite(module.p.grad).all()


def test_regional_gem_gradcheck_on_p() -> None:
    x = _maps(9, (1, 2, 4, 3)).requires_grad_(True)
    p = torch.tensor([3.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: P.regional_gem(a, b, 2.5, 3), (x, p), eps=1e-6, atol=1e-5)


def test_scale_gem_and_combine_scales_match_loops() -> None:
    g = torch.Generator().manual_seed(10)
    per_scale = P.l2n(torch.randn(3, 4, 6, generator=g, dtype=torch.float64))  # signed (whitened-like)
    v = per_scale.numpy()
    for p in (math.inf, 1.0, 10.0):
        np.testing.assert_allclose(P.scale_gem(per_scale, p).numpy(), ref_scale_gem(v, p), rtol=1e-9, atol=1e-12)
    summed = v[0] + v[1] + v[2]
    want = {
        "sum": summed,
        "max": ref_scale_gem(v, math.inf),
        "gem": ref_scale_gem(v, 10.0),
    }
    for agg in P.SCALE_AGGS:
        got = P.combine_scales(per_scale, agg, 10.0).numpy()
        np.testing.assert_allclose(got, want[agg] / np.linalg.norm(want[agg], axis=1, keepdims=True), atol=1e-6)
    # the sum is the one the extractor has always computed, bit for bit
    f32 = per_scale.float()
    assert torch.equal(P.combine_scales(f32, "sum"), P.l2n(f32[0] + f32[1] + f32[2]))
    # p = 1: the arithmetic mean; one scale: the scale itself
    np.testing.assert_allclose(P.scale_gem(per_scale, 1.0).numpy(), v.mean(axis=0), atol=1e-12)
    for agg in P.SCALE_AGGS:
        np.testing.assert_allclose(P.combine_scales(per_scale[:1], agg).numpy(), v[0], atol=1e-6)
    with pytest.raises(UnknownNameError, match="valid scale aggregations: gem, max, sum"):
        P.combine_scales(per_scale, "mean")
    with pytest.raises(ValueError, match="scales, batch, dim"):
        P.scale_gem(per_scale[0], 3.0)
