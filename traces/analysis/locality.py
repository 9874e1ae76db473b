"""Locality of routing: traffic concentration, adjacent-token reuse and reuse distances.

Traffic concentration (per MoE layer, from the selection counts ``n_l(e)``)
    ``top_half_share``: share of all selections going to the ``ceil(E/2)`` most popular experts
    (0.5 for uniform routing, 1.0 when half the experts take everything).
    ``experts_for_95pct``: the smallest number of experts, most popular first, that together
    receive at least 95 % of the selections, as a fraction of ``E``.

Adjacent-token reuse ratio (per MoE layer)
    ``S_t`` is token ``t``'s top-k set at the layer. The observed reuse is the mean of
    ``|S_t ∩ S_{t+1}|`` over adjacent token pairs of a request (see
    :func:`traces.analysis.information.adjacent_pairs`). Chance is the expected overlap of two
    tokens drawn independently and uniformly (with replacement) from the trace:
    ``E|S_u ∩ S_v| = sum_e (n_e / T)^2`` with ``n_e`` the number of tokens whose set contains
    ``e``. The ratio is observed / chance: about 1 means no temporal locality beyond expert
    popularity, above 1 means consecutive tokens share experts more than popularity explains.
    NaN without adjacent pairs.

Reuse distance in tokens
    See :mod:`traces.analysis.cache_curves`: for each non-first access of a ``(layer, expert)``
    key, the number of tokens since its previous access; summarised by mean, p50 and p90.
"""

from __future__ import annotations

import numpy as np
from moe_offload_lab.traces.analysis.cache_curves import lru_pass
from moe_offload_lab.traces.analysis.entropy import expert_counts
from moe_offload_lab.traces.analysis.information import adjacent_joint
from moe_offload_lab.traces.format import Trace


def _counts(data: Trace | np.ndarray) -> np.ndarray:
    if isinstance(data, Trace):
        return expert_counts(data)
    counts = np.asarray(data)
    return counts[None, :] if counts.ndim == 1 else counts


def top_half_traffic(data: Trace | np.ndarray) -> np.ndarray:
    """Share of selections taken by the most popular ``ceil(E/2)`` experts, per layer ([L]).

    Accepts a Trace or an [L, E] count array; NaN for a layer without selections.
    """
    counts = _counts(data).astype(np.float64)
    n_experts = counts.shape[1]
    ordered = -np.sort(-counts, axis=1)
    total = counts.sum(axis=1)
    top = ordered[:, : (n_experts + 1) // 2].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, top / total, np.nan)


def experts_for_95pct(data: Trace | np.ndarray, share: float = 0.95) -> np.ndarray:
    """Fraction of experts needed (most popular first) to cover ``share`` of selections ([L]).

    Accepts a Trace or an [L, E] count array; NaN for a layer without selections.
    """
    counts = _counts(data).astype(np.int64)
    n_experts = counts.shape[1]
    ordered = -np.sort(-counts, axis=1)
    cum = np.cumsum(ordered, axis=1)
    total = cum[:, -1:] if n_experts else np.zeros((counts.shape[0], 1), np.int64)
    # exact integer test cum >= share * total for the default 95 %: 100 * cum >= 95 * total
    if share == 0.95:
        covered = 100 * cum >= 95 * total
    else:
        covered = cum >= share * total
    needed = np.argmax(covered, axis=1) + 1
    return np.where(total[:, 0] > 0, needed / n_experts, np.nan)


def adjacent_reuse_ratio(trace: Trace, *, joint: np.ndarray | None = None,
                         counts: np.ndarray | None = None) -> np.ndarray:
    """Observed adjacent-token overlap divided by chance overlap, per MoE layer ([L]).

    ``joint`` (from :func:`traces.analysis.information.adjacent_joint`) and ``counts`` (from
    :func:`traces.analysis.entropy.expert_counts`) may be passed to avoid recomputing them: the
    summed overlap of the adjacent pairs is the trace of the adjacent joint table.
    """
    joint = adjacent_joint(trace) if joint is None else joint
    counts = expert_counts(trace) if counts is None else counts
    k = trace.spec.top_k
    n_tokens = trace.num_tokens
    pair_weight = joint.sum(axis=(1, 2)).astype(np.float64)  # k*k per pair
    n_pairs = pair_weight / (k * k)
    overlap = np.trace(joint, axis1=1, axis2=2).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = np.where(n_pairs > 0, overlap / n_pairs, np.nan)
        chance = ((counts.astype(np.float64) / max(n_tokens, 1)) ** 2).sum(axis=1)
        return np.where((n_pairs > 0) & (chance > 0), observed / chance, np.nan)


def reuse_distance_tokens(trace: Trace) -> dict[str, float]:
    """Mean, p50 and p90 of the reuse distance in tokens over non-first key accesses."""
    return lru_pass(trace).reuse_distance_tokens()
