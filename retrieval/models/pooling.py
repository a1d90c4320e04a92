"""Global pooling of CNN feature maps: pure functions and their thin ``nn.Module`` twins.

Feature maps are ``(B, C, H, W)`` tensors of non-negative activations (the backbones end
in a ReLU/ReLU6). Poolings:

* **MAC**  - maximum activation per channel (Tolias et al. 2016).
* **SPoC** - average (sum) pooling (Babenko & Lempitsky 2015).
* **GeM**  - generalized mean with exponent ``p`` (Radenović et al. 2018); ``p`` learnable.
* **R-MAC** - regional MAC: MAC over a fixed multi-scale grid of square regions
  (:func:`rmac_regions`), each region vector L2-normalized, optionally PCA-whitened and
  L2-normalized again, then summed and L2-normalized (Tolias et al. 2016; Gordo et al. 2016).

Pooling over an arbitrary box (a query crop, a detected object) runs the same functions
on the box's part of the feature map (:func:`pool_boxes`), so region descriptors and
whole-image descriptors are directly comparable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retrieval.errors import UnknownNameError
from retrieval.models.pooling_defaults import (
    EPS,
    GEM_P,
    RELU_PLUS_EPS,
    RGEM_PR,
    RGEM_SIZE,
    RMAC_LEVELS,
    RMAC_OVERLAP,
    SCALE_AGGS,
    SCALE_GEM_P,
)

#: Candidate numbers of regions along the long side at the coarsest R-MAC level.
_RMAC_STEPS = (2, 3, 4, 5, 6, 7)

Region = tuple[int, int, int, int]  # (y0, x0, height, width) in feature-map cells
Projection = Callable[[Tensor], Tensor]


def l2n(x: Tensor, dim: int = -1, eps: float = EPS) -> Tensor:
    """L2-normalize ``x`` along ``dim``."""
    return x / (torch.linalg.vector_norm(x, ord=2, dim=dim, keepdim=True) + eps)


def mac(x: Tensor) -> Tensor:
    """Maximum activation of convolutions: ``(B, C, H, W) -> (B, C)``."""
    return x.amax(dim=(-2, -1))


def spoc(x: Tensor) -> Tensor:
    """Sum-pooled convolutional features (as a mean): ``(B, C, H, W) -> (B, C)``."""
    return x.mean(dim=(-2, -1))


def gem(x: Tensor, p: Tensor | float = GEM_P, eps: float = EPS) -> Tensor:
    """Generalized-mean pooling ``(mean(x^p))^(1/p)``: ``(B, C, H, W) -> (B, C)``."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def relu_plus(x: Tensor, eps: float = RELU_PLUS_EPS) -> Tensor:
    """ReLU+ of SuperGlobal: activations clamped at the floor ``eps`` (> 0) before pooling."""
    return x.clamp(min=eps)


def _check_window(size: int) -> int:
    if int(size) != size or size < 1 or size % 2 == 0:
        raise ValueError(f"the regional GeM window must be an odd number of cells >= 1, got {size}")
    return int(size)


def local_gem(x: Tensor, p: float = RGEM_PR, size: int = RGEM_SIZE, eps: float = EPS) -> Tensor:
    """Power mean (exponent ``p``) of each cell's ``size x size`` neighbourhood: ``(B, C, H, W) -> same``.

    The window is centred on the cell and clipped to the map (border cells average fewer
    cells); activations are clamped at ``eps`` first, as in :func:`gem`.
    """
    size = _check_window(size)
    powered = x.clamp(min=eps).pow(p)
    mean = F.avg_pool2d(powered, size, stride=1, padding=size // 2, count_include_pad=False)
    return mean.pow(1.0 / p)


def regional_gem(
    x: Tensor, p: Tensor | float = GEM_P, pr: float = RGEM_PR, size: int = RGEM_SIZE, eps: float = EPS
) -> Tensor:
    """Regional GeM: ``gem((x + local_gem(x, pr, size)) / 2, p)``: ``(B, C, H, W) -> (B, C)``."""
    return gem(0.5 * (x + local_gem(x, pr, size, eps)), p, eps)


def scale_gem(per_scale: Tensor, p: float = SCALE_GEM_P) -> Tensor:
    """Scale-GeM: ``(S, B, D)`` per-scale descriptors -> ``(B, D)``, not normalized.

    ``p = inf``: the element-wise maximum over the scales. Otherwise the power mean over the
    scales of the descriptors shifted by ``gamma``, each sample's minimum over all its scales
    and dimensions (so whitened, signed descriptors work too), shifted back:
    ``(mean_s (x_s - gamma)^p)^(1/p) + gamma``.
    """
    if per_scale.dim() != 3:
        raise ValueError(f"per-scale descriptors are (scales, batch, dim), got shape {tuple(per_scale.shape)}")
    if math.isinf(p):
        return per_scale.amax(dim=0)
    if not p > 0:
        raise ValueError(f"the Scale-GeM exponent must be > 0, got {p}")
    gamma = per_scale.amin(dim=(0, 2), keepdim=True)  # (1, B, 1)
    return (per_scale - gamma).pow(p).mean(dim=0).pow(1.0 / p) + gamma[0]


def _sum_scales(per_scale: Tensor, p: float) -> Tensor:
    total = per_scale[0]
    for vec in per_scale[1:]:  # one scale after the other, as the extractor has always added them
        total = total + vec
    return total


_SCALE_COMBINERS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "sum": _sum_scales,
    "max": lambda v, p: scale_gem(v, math.inf),
    "gem": scale_gem,
}


def combine_scales(per_scale: Tensor, agg: str = "sum", p: float = SCALE_GEM_P) -> Tensor:
    """The image descriptor from its L2-normalized per-scale descriptors ``(S, B, D)``: ``-> (B, D)``, L2-normalized.

    ``agg``: ``"sum"`` (the default and the behaviour of every model before Scale-GeM),
    ``"max"`` or ``"gem"`` (:func:`scale_gem` with exponent ``p``).
    """
    try:
        combine = _SCALE_COMBINERS[agg]
    except KeyError:
        raise UnknownNameError("scale aggregation", agg, list(SCALE_AGGS)) from None
    return l2n(combine(per_scale, p), dim=-1)


def _long_side_regions(short: int, long: int, overlap: float) -> int:
    """Number of coarsest-level regions along the long side (m in Tolias et al.)."""
    if long == short:
        return 1
    best_m, best_err = _RMAC_STEPS[0], math.inf
    for m in _RMAC_STEPS:
        step = (long - short) / (m - 1)
        err = abs((short - step) / short - overlap)
        if err < best_err - 1e-12:
            best_m, best_err = m, err
    return best_m


def _starts(extent: int, size: int, count: int) -> list[int]:
    if count <= 1:
        return [0]
    step = (extent - size) / (count - 1)
    return [math.floor(i * step) for i in range(count)]


@lru_cache(maxsize=4096)
def rmac_regions(
    height: int, width: int, levels: int = RMAC_LEVELS, overlap: float = RMAC_OVERLAP
) -> tuple[Region, ...]:
    """The R-MAC region grid of Tolias et al. (2016) on an ``height x width`` map.

    Level ``l = 1..levels`` has square regions of side ``floor(2 * min(H, W) / (l + 1))``
    (level 1: the largest square, ``min(H, W)``). Along the short side there are ``l``
    regions, along the long side ``l + m - 1``, where ``m`` (the count at level 1) is the
    one of 2..7 whose overlap of consecutive regions is closest to ``overlap`` (``m = 1``
    for a square map). Regions are spread uniformly: the first touches the start, the last
    the end, start offsets rounded down; coinciding regions (tiny maps) are kept once.
    Levels whose regions would be empty are skipped.
    """
    if height < 1 or width < 1:
        raise ValueError(f"feature map must be at least 1x1, got {height}x{width}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    short, long = min(height, width), max(height, width)
    m = _long_side_regions(short, long, overlap)
    regions: list[Region] = []
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        if side < 1:
            break
        n_short, n_long = level, level + m - 1
        n_h, n_w = (n_long, n_short) if height > width else (n_short, n_long)
        for y0 in dict.fromkeys(_starts(height, side, n_h)):  # dict: unique, in order
            for x0 in dict.fromkeys(_starts(width, side, n_w)):
                regions.append((y0, x0, side, side))
    return tuple(regions)


def region_mac(x: Tensor, regions: Sequence[Region]) -> Tensor:
    """MAC of each region: ``(B, C, H, W) -> (B, R, C)``.

    Regions of one size are computed together with one ``max_pool2d`` (stride 1) over the
    map, then gathered at the region starts; this is several times faster than slicing
    region by region (the slow, obvious loop is the reference in the tests).
    """
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, (_, _, h, w) in enumerate(regions):
        by_size.setdefault((h, w), []).append(i)
    batch, channels = x.shape[0], x.shape[1]
    out = x.new_empty((batch, len(regions), channels))
    for (h, w), indices in by_size.items():
        if h == x.shape[-2] and w == x.shape[-1]:
            out[:, indices[0], :] = mac(x)
            continue
        pooled = F.max_pool2d(x, kernel_size=(h, w), stride=1)  # (B, C, H-h+1, W-w+1)
        flat = pooled.flatten(2)
        pos = torch.tensor(
            [regions[i][0] * pooled.shape[-1] + regions[i][1] for i in indices], device=x.device
        )
        out[:, indices, :] = flat.index_select(2, pos).transpose(1, 2)
    return out


def rmac_region_vectors(x: Tensor, levels: int = RMAC_LEVELS, overlap: float = RMAC_OVERLAP) -> Tensor:
    """L2-normalized R-MAC region vectors ``(B, R, C)``, before whitening and sum."""
    regions = rmac_regions(int(x.shape[-2]), int(x.shape[-1]), levels, overlap)
    return l2n(region_mac(x, regions), dim=-1)


def rmac(
    x: Tensor, levels: int = RMAC_LEVELS, overlap: float = RMAC_OVERLAP, projection: Projection | None = None
) -> Tensor:
    """R-MAC: region MACs -> L2 -> [projection -> L2] -> sum -> L2. ``(B, C, H, W) -> (B, D)``.

    ``projection`` is applied to each region vector (Gordo et al.: PCA-whitening as a shift
    and a linear projection); without it this is the original R-MAC of Tolias et al.
    """
    vectors = rmac_region_vectors(x, levels, overlap)
    if projection is not None:
        vectors = l2n(projection(vectors), dim=-1)
    return l2n(vectors.sum(dim=1), dim=-1)


# --------------------------------------------------------------------------- modules


class MAC(nn.Module):
    """Module twin of :func:`mac`."""

    def forward(self, x: Tensor) -> Tensor:
        return mac(x)


class SPoC(nn.Module):
    """Module twin of :func:`spoc`."""

    def forward(self, x: Tensor) -> Tensor:
        return spoc(x)


class GeM(nn.Module):
    """Module twin of :func:`gem`; ``p`` is a learnable parameter unless ``learn_p=False``."""

    def __init__(self, p: float = GEM_P, eps: float = EPS, learn_p: bool = True) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor([float(p)]), requires_grad=learn_p)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()[0]):.4f}, eps={self.eps}"


class RegionalGeM(GeM):
    """Module twin of :func:`regional_gem`; ``p`` (of the final GeM) is a parameter as in :class:`GeM`."""

    def __init__(
        self, p: float = GEM_P, pr: float = RGEM_PR, size: int = RGEM_SIZE, eps: float = EPS, learn_p: bool = True
    ) -> None:
        super().__init__(p, eps, learn_p)
        if not pr > 0:
            raise ValueError(f"the regional GeM exponent pr must be > 0, got {pr}")
        self.pr = float(pr)
        self.size = _check_window(size)

    def forward(self, x: Tensor) -> Tensor:
        return regional_gem(x, self.p, self.pr, self.size, self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pr={self.pr}, size={self.size}"


class ReLUPlus(nn.Module):
    """Module twin of :func:`relu_plus` (holds the floor only)."""

    def __init__(self, eps: float = RELU_PLUS_EPS) -> None:
        super().__init__()
        if not eps > 0:
            raise ValueError(f"the ReLU+ floor must be > 0, got {eps}")
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:
        return relu_plus(x, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class RMAC(nn.Module):
    """Module twin of :func:`rmac` (holds the grid settings only)."""

    def __init__(self, levels: int = RMAC_LEVELS, overlap: float = RMAC_OVERLAP) -> None:
        super().__init__()
        self.levels = levels
        self.overlap = overlap

    def forward(self, x: Tensor, projection: Projection | None = None) -> Tensor:
        return rmac(x, self.levels, self.overlap, projection)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, overlap={self.overlap}"


POOLINGS: dict[str, Callable[..., nn.Module]] = {
    "mac": MAC, "spoc": SPoC, "gem": GeM, "rgem": RegionalGeM, "rmac": RMAC,
}


def create_pooling(name: str, **params: float | int | bool) -> nn.Module:
    """Build a pooling module by name (``mac``, ``spoc``, ``gem``, ``rgem``, ``rmac``)."""
    try:
        factory = POOLINGS[name]
    except KeyError:
        raise UnknownNameError("pooling", name, list(POOLINGS)) from None
    return factory(**params)


def feature_box(
    box: Sequence[float], stride: float, height: int, width: int
) -> tuple[int, int, int, int]:
    """Map an image-pixel box ``(x0, y0, x1, y1)`` to feature cells ``(y0, x0, y1, x1)``.

    Cells are included when the box touches them (floor / ceil), clipped to the map; at
    least one cell is always kept, so tiny boxes still pool their nearest cell.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    cx0 = min(max(math.floor(x0 / stride), 0), width - 1)
    cy0 = min(max(math.floor(y0 / stride), 0), height - 1)
    cx1 = max(min(math.ceil(x1 / stride), width), cx0 + 1)
    cy1 = max(min(math.ceil(y1 / stride), height), cy0 + 1)
    return cy0, cx0, cy1, cx1


def pool_boxes(
    feature_map: Tensor,
    boxes: Sequence[Sequence[float]],
    stride: float,
    pool: Callable[[Tensor], Tensor],
) -> Tensor:
    """Pool one image's ``(C, H, W)`` map over each box: ``-> (n_boxes, D)``.

    ``pool`` maps a ``(1, C, h, w)`` crop to ``(1, D)``: the same head used for whole
    images, so a box covering the whole image gives exactly the whole-image descriptor.
    """
    height, width = int(feature_map.shape[-2]), int(feature_map.shape[-1])
    outs = []
    for box in boxes:
        cy0, cx0, cy1, cx1 = feature_box(box, stride, height, width)
        outs.append(pool(feature_map[None, :, cy0:cy1, cx0:cx1]))
    if not outs:
        return feature_map.new_empty((0, 0))
    return torch.cat(outs, dim=0)
