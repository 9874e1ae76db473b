"""Accuracy of the trace's lookahead predictions.

``trace.lookahead[d][:, l]`` holds the experts that layer ``l + d``'s router would pick from layer
``l``'s hidden state. For distance ``d`` and target layer ``t >= d`` the accuracy is the mean over
tokens of ``|lookahead[d][:, t - d] ∩ expert_ids[:, t]| / k``: the share of the true top-k set the
prediction recovers (order ignored). Target layers ``t < d`` have no prediction (NaN / None).
"""

from __future__ import annotations

import numba
import numpy as np
from moe_offload_lab.traces.analysis._common import routing, set_overlap
from moe_offload_lab.traces.errors import TraceError
from moe_offload_lab.traces.format import Trace


@numba.njit(cache=True, nogil=True)
def _overlap_per_target(predicted, ids, distance):  # pragma: no cover - compiled
    """Summed ``|predicted[t, l-d] ∩ ids[t, l]|`` over tokens, per target layer l (int64 [L])."""
    n_tokens, n_layers = ids.shape[0], ids.shape[1]
    out = np.zeros(n_layers, np.int64)
    for t in range(n_tokens):
        for target in range(distance, n_layers):
            out[target] += set_overlap(predicted[t, target - distance], ids[t, target])
    return out


def lookahead_accuracy(trace: Trace) -> dict[int, np.ndarray]:
    """``{d: accuracy per target layer}`` (float64 [L], NaN for ``t < d``) for every distance ``d``
    present in the trace; ``{}`` without lookahead columns."""
    ids = routing(trace)
    n_tokens, n_layers, k = ids.shape
    out: dict[int, np.ndarray] = {}
    for d in trace.lookahead_distances:
        acc = np.full(n_layers, np.nan)
        if n_tokens and d < n_layers:
            pred = np.ascontiguousarray(trace.lookahead[d], dtype=np.int16)
            if pred.shape != ids.shape:
                raise TraceError(f"lookahead distance {d} has shape {pred.shape}, expected "
                                 f"{ids.shape}")
            acc[d:] = _overlap_per_target(pred, ids, int(d))[d:] / (n_tokens * k)
        out[int(d)] = acc
    return out
