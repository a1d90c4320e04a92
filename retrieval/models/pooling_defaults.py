"""Default settings of the poolings, without torch: one place for :mod:`retrieval.models.pooling`
(the torch functions and modules) and :mod:`retrieval.quick.head` (their numpy twin).

The SuperGlobal values (GeM+ ``p``, regional GeM's window and exponent, ReLU+'s floor,
Scale-GeM's exponent) are those of Shao et al., "Global Features are All You Need for Image
Retrieval and Reranking" (ICCV 2023).
"""

from __future__ import annotations

#: clamp floor of GeM and of every norm's denominator
EPS = 1e-6
#: R-MAC grid: levels and the overlap of consecutive regions (Tolias et al. 2016)
RMAC_LEVELS = 3
RMAC_OVERLAP = 0.4
#: GeM's exponent (Radenović et al. 2018)
GEM_P = 3.0
#: GeM+: the exponent SuperGlobal tunes GeM to
GEM_PLUS_P = 4.6
#: regional GeM: exponent and side (cells, odd) of the local window of the regional step
RGEM_PR = 2.5
RGEM_SIZE = 5
#: ReLU+: activations are clamped at this floor before pooling
RELU_PLUS_EPS = 0.014
#: how per-scale descriptors become one: today's sum, Scale-GeM's max (p = infinity) or power mean
SCALE_AGGS = ("sum", "max", "gem")
#: Scale-GeM's exponent when ``scale_agg="gem"``
SCALE_GEM_P = 10.0
