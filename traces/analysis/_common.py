"""Small helpers shared by the analysis modules (not part of the public API)."""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from moe_offload_lab.traces.errors import TraceError
from moe_offload_lab.traces.format import Trace


def routing(trace: Trace) -> np.ndarray:
    """``trace.expert_ids`` as a C-contiguous int16 [T, L, k] array (no copy when already so).

    Checks the shape against the ModelSpec and that every id lies in ``[0, E)`` (the compiled
    kernels index tables with the ids and do no bounds checks); raises TraceError otherwise.
    """
    ids = trace.expert_ids
    spec = trace.spec
    if not isinstance(ids, np.ndarray) or ids.ndim != 3 \
            or ids.shape[1:] != (spec.num_moe_layers, spec.top_k):
        raise TraceError(f"expert_ids must be a [tokens, {spec.num_moe_layers}, {spec.top_k}] "
                         "numpy array (tokens, MoE layers, top_k)")
    ids = np.ascontiguousarray(ids, dtype=np.int16)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= spec.num_experts):
        raise TraceError(f"expert_ids hold ids outside [0, {spec.num_experts})")
    return ids


@numba.njit(cache=True, nogil=True)
def _transpose_tokens_layers(ids, out):  # pragma: no cover - compiled
    n_tokens, n_layers, k = ids.shape
    for t0 in range(0, n_tokens, 256):  # blocks of tokens: sequential reads, L write streams
        t1 = min(n_tokens, t0 + 256)
        for layer in range(n_layers):
            for t in range(t0, t1):
                for s in range(k):
                    out[layer, t, s] = ids[t, layer, s]


@numba.njit(cache=True, nogil=True, inline="always")
def set_overlap(a, b):  # pragma: no cover - compiled
    """|A ∩ B| of two rows of distinct expert ids (each a top-k set, any order)."""
    m = 0
    for x in range(a.shape[0]):
        e = a[x]
        for y in range(b.shape[0]):
            m += b[y] == e
    return m


def layer_major(ids: np.ndarray) -> np.ndarray:
    """A layer-major copy [L, T, k] of token-major routing [T, L, k] (same dtype).

    Per-layer passes over the layer-major copy read contiguous memory instead of one cache line
    per token.
    """
    out = np.empty((ids.shape[1], ids.shape[0], ids.shape[2]), dtype=ids.dtype)
    if out.size:
        _transpose_tokens_layers(ids, out)
    return out


def entropy_of_counts(counts: np.ndarray) -> np.ndarray:
    """Plug-in entropy in bits along the last axis of a count array; NaN where the total is 0."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = counts / total[..., None]
        terms = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
        return np.where(total > 0, -terms.sum(axis=-1), np.nan)


def nanmean(values: np.ndarray | list[float]) -> float:
    """Mean over the finite entries; NaN when there are none (no warning)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


def json_float(value: Any, digits: int = 6) -> float | None:
    """A float rounded to ``digits`` decimals, or None for NaN / infinity / None."""
    if value is None:
        return None
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def json_list(values: np.ndarray | list[float], digits: int = 6) -> list[float | None]:
    """A list of :func:`json_float` values."""
    return [json_float(v, digits) for v in np.asarray(values, dtype=np.float64).tolist()]
