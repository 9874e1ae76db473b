"""Expert popularity per MoE layer: selection counts, entropy and power-law skew.

Definitions (the project's, used by every analysis module)
---------------------------------------------------------
*Expert-selection variable* ``X_l``: the expert id held by one top-k slot of a token at MoE layer
``l``. Every token contributes its ``k`` slots, each with equal weight ``1/k``, so the marginal
distribution of ``X_l`` is the selection frequency ``p_l(e) = n_l(e) / (T * k)`` where ``n_l(e)``
counts the (token, slot) pairs of layer ``l`` that selected expert ``e``. Because the ids of one
token and layer are distinct, ``n_l(e)`` is also the number of tokens whose top-k set at layer
``l`` contains ``e``.

*Entropy* ``H(X_l) = -sum_e p_l(e) log2 p_l(e)`` in bits; it is at most ``log2 E`` (uniform
routing) and at least ``log2 k`` when every token has the same set.

*Power-law exponent* ``alpha_l``: experts with a nonzero count are sorted by count, descending,
and given ranks ``r = 1, 2, ...``; ``alpha_l`` is minus the least-squares slope of
``log p_l(e)`` against ``log r`` (so the fit is ``log p = c - alpha log r``). Positive means skewed;
``alpha = 0`` means all used experts are equally popular. Undefined (NaN) with fewer than two used
experts.
"""

from __future__ import annotations

import numba
import numpy as np
from moe_offload_lab.traces.analysis._common import entropy_of_counts, routing
from moe_offload_lab.traces.format import Trace


@numba.njit(cache=True, nogil=True)
def _layer_counts(ids, num_experts):  # pragma: no cover - compiled
    n_tokens, n_layers, k = ids.shape
    out = np.zeros((n_layers, num_experts), np.int64)
    for t in range(n_tokens):
        for layer in range(n_layers):
            for s in range(k):
                out[layer, ids[t, layer, s]] += 1
    return out


def expert_counts(trace: Trace) -> np.ndarray:
    """Selection counts ``n_l(e)``: an int64 [L, E] array (one count per top-k slot)."""
    return _layer_counts(routing(trace), trace.spec.num_experts)


def _counts(data: Trace | np.ndarray) -> np.ndarray:
    if isinstance(data, Trace):
        return expert_counts(data)
    counts = np.asarray(data)
    if counts.ndim == 1:
        counts = counts[None, :]
    return counts


def entropy_bits(data: Trace | np.ndarray) -> np.ndarray:
    """``H(X_l)`` in bits per MoE layer, from a Trace or from an [L, E] count array.

    Returns a float64 [L] array; NaN for a layer without selections (an empty trace).
    """
    return entropy_of_counts(_counts(data))


def power_law_alpha(data: Trace | np.ndarray) -> np.ndarray:
    """Power-law exponent ``alpha_l`` per MoE layer (see the module docstring), float64 [L].

    Accepts a Trace or an [L, E] count array. NaN for a layer with fewer than two used experts.
    """
    counts = _counts(data)
    out = np.full(counts.shape[0], np.nan)
    for layer, row in enumerate(counts):  # one small fit per layer (L iterations, E values each)
        used = np.sort(row[row > 0])[::-1].astype(np.float64)
        if used.size < 2:
            continue
        x = np.log(np.arange(1, used.size + 1, dtype=np.float64))
        y = np.log(used / used.sum())
        x0 = x - x.mean()
        out[layer] = -float(np.dot(x0, y - y.mean()) / np.dot(x0, x0))
    return out
