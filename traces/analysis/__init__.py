"""Trace analysis: how predictable and cacheable is a routing trace?

Modules (each documents its definitions):

- :mod:`~traces.analysis.entropy` -- selection counts, per-layer entropy, power-law skew;
- :mod:`~traces.analysis.information` -- cross-layer and adjacent-token mutual information,
  conditional entropy given the previous layers;
- :mod:`~traces.analysis.locality` -- traffic concentration, adjacent-token reuse ratio, reuse
  distance in tokens;
- :mod:`~traces.analysis.cache_curves` -- LRU stack distances, the LRU hit-ratio curve of every
  cache size in one pass, Belady's MIN;
- :mod:`~traces.analysis.lookahead` -- accuracy of the trace's lookahead predictions;
- :mod:`~traces.analysis.report` -- :func:`compute_stats`, everything as one JSON-ready dict;
- :mod:`~traces.analysis.profile` -- :func:`routing_profile`, the statistics ``moe-trace compare``
  and ``moe-trace fit`` use (cache curves, reuse against chance, transitions, skew);
- :mod:`~traces.analysis.plot` -- :func:`plot_stats`, a figure of that dict.

The hot loops are numba kernels compiled on first use and cached on disk (``cache=True``).
"""

from moe_offload_lab.traces.analysis.cache_curves import (
    access_keys,
    belady_hit_ratio,
    belady_hit_ratios,
    hit_ratio_curve,
    lru_hit_ratio_curve,
    lru_pass,
    stack_distances,
)
from moe_offload_lab.traces.analysis.entropy import entropy_bits, expert_counts, power_law_alpha
from moe_offload_lab.traces.analysis.information import (
    adjacent_mutual_information,
    conditional_entropy,
    cross_layer_mutual_information,
)
from moe_offload_lab.traces.analysis.locality import (
    adjacent_reuse_ratio,
    experts_for_95pct,
    reuse_distance_tokens,
    top_half_traffic,
)
from moe_offload_lab.traces.analysis.lookahead import lookahead_accuracy
from moe_offload_lab.traces.analysis.report import SCHEMA, compute_stats

__all__ = [
    "SCHEMA", "access_keys", "adjacent_mutual_information", "adjacent_reuse_ratio",
    "belady_hit_ratio", "belady_hit_ratios", "compute_stats", "conditional_entropy",
    "cross_layer_mutual_information", "entropy_bits", "expert_counts", "experts_for_95pct",
    "hit_ratio_curve", "lookahead_accuracy", "lru_hit_ratio_curve", "lru_pass",
    "power_law_alpha", "reuse_distance_tokens", "stack_distances", "top_half_traffic",
]
