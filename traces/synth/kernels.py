"""Compiled kernels of the synthetic generator (numba; the model: :mod:`traces.synth.generate`).

:func:`route_tokens` walks the tokens in row order and the MoE layers in forward order, evolving
each token's latent state and applying every router to it: the routing, the lookahead columns and
the features of a token all come from the same state vector. :func:`lookahead_overlap` is the
Monte-Carlo estimate the structure builder uses to turn a target lookahead accuracy into a layer
persistence.
"""

from __future__ import annotations

import numba
import numpy as np
from moe_offload_lab.traces.analysis._common import set_overlap

# reassociation lets LLVM vectorise the dot products; infinities and NaNs keep their meaning
_FAST = {"reassoc", "contract", "nsz", "arcp"}
_FLOOR = -1.0e300  # below any logit (a finite sentinel)


def _gaussian_table(bits: int = 16) -> np.ndarray:
    """Normal quantiles at the midpoints of 2**bits equal-probability cells, rescaled to unit
    variance: indexing it with 16 random bits draws a (finely discretised) standard normal."""
    from statistics import NormalDist

    n = 1 << bits
    inv = NormalDist().inv_cdf
    table = np.array([inv((i + 0.5) / n) for i in range(n)])
    return table / table.std()


GAUSS = _gaussian_table()  # [65536]


@numba.njit(cache=True, inline="always")
def _next(state):  # pragma: no cover - compiled
    """splitmix64: advance state [1] (uint64) and return 64 random bits."""
    s = state[0] + np.uint64(0x9E3779B97F4A7C15)
    state[0] = s
    s = (s ^ (s >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    s = (s ^ (s >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return s ^ (s >> np.uint64(31))


@numba.njit(cache=True)
def _normals(state, table, out, count):  # pragma: no cover - compiled
    """Fill out[:count] with standard normals, four per 64 random bits (table lookups)."""
    i = 0
    while i < count:
        bits = _next(state)
        for _ in range(4):
            if i < count:
                out[i] = table[np.int64(bits & np.uint64(0xFFFF))]
                bits = bits >> np.uint64(16)
                i += 1


@numba.njit(cache=True, inline="always")
def _top_k(values, idx, val):  # pragma: no cover - compiled
    """The k largest of ``values`` [E] into ``idx``/``val`` [k], largest first (ties: lower id)."""
    k = idx.shape[0]
    for j in range(k):
        val[j] = _FLOOR
        idx[j] = -1
    for e in range(values.shape[0]):
        v = values[e]
        if v > val[k - 1]:
            j = k - 1
            while j > 0 and val[j - 1] < v:
                val[j] = val[j - 1]
                idx[j] = idx[j - 1]
                j -= 1
            val[j] = v
            idx[j] = e


@numba.njit(cache=True, fastmath=_FAST)
def _router_logits(router, bias, layer, h, out):  # pragma: no cover - compiled
    """out[e] = bias[layer, e] + router[layer, e] . h (the router of ``layer`` applied to h)."""
    n_experts, dim = router.shape[1], router.shape[2]
    for e in range(n_experts):
        acc = bias[layer, e]
        for j in range(dim):
            acc += router[layer, e, j] * h[j]
        out[e] = acc


@numba.njit(cache=True, fastmath=_FAST)
def route_tokens(router, bias, noise, rho, phi, request_share, inv_temperature, gates_all,
                 request_id, seed, z, r, carry_request, out_ids, out_gates, out_look,
                 out_feat, feature_noise, table):  # pragma: no cover - compiled
    """Route a block of consecutive tokens through every MoE layer.

    router [L, E, D] unit rows, bias [L, E], noise / rho / phi / inv_temperature [L],
    request_id [n]; carry-over between blocks: z [L, D] (each layer's token-level innovation of
    the previous token), r [D] (its request vector), carry_request (its request id, returned
    updated). Writes out_ids / out_gates [n, L, k], out_look [n_look, n, L, k] (rows whose target
    lies beyond the last layer are left as they are) and out_feat [n, L, F] (F may be 0).
    Normals come from ``table`` (:data:`GAUSS`) indexed by a splitmix64 stream seeded by ``seed``.
    """
    state = np.empty(1, np.uint64)
    state[0] = np.uint64(seed)
    n = request_id.shape[0]
    n_layers, n_experts, dim = router.shape
    k = out_ids.shape[2]
    n_look = out_look.shape[0]
    width = out_feat.shape[2]
    share_r = np.sqrt(request_share)
    share_x = np.sqrt(1.0 - request_share)
    x = np.empty(dim)
    h = np.empty(dim)
    logits = np.empty(n_experts)
    ahead = np.empty(n_experts)
    idx = np.empty(k, np.int64)
    val = np.empty(k)
    draws = np.empty(max(dim, n_experts, width))
    for t in range(n):
        fresh = request_id[t] != carry_request
        if fresh:  # a new request: its own direction and a stationary start of every z
            _normals(state, table, r, dim)
            for layer in range(n_layers):
                _normals(state, table, z[layer], dim)
        for layer in range(n_layers):
            if not fresh:  # AR(1) across the tokens of a request
                a = phi[layer]
                b = np.sqrt(1.0 - a * a)
                _normals(state, table, draws, dim)
                for j in range(dim):
                    z[layer, j] = a * z[layer, j] + b * draws[j]
            if layer == 0:
                for j in range(dim):
                    x[j] = z[0, j]
            else:  # AR(1) across layers: the residual stream changes a little per block
                a = rho[layer]
                b = np.sqrt(1.0 - a * a)
                for j in range(dim):
                    x[j] = a * x[j] + b * z[layer, j]
            for j in range(dim):
                h[j] = share_r * r[j] + share_x * x[j]
            # routing: the layer's router on the state, plus the router's private noise
            _router_logits(router, bias, layer, h, logits)
            sigma = noise[layer]
            if sigma > 0.0:
                _normals(state, table, draws, n_experts)
                for e in range(n_experts):
                    logits[e] += sigma * draws[e]
            _top_k(logits, idx, val)
            scale = inv_temperature[layer]
            total = 0.0
            if gates_all:  # softmax over every expert, the top-k shares not renormalised
                for e in range(n_experts):
                    total += np.exp((logits[e] - val[0]) * scale)
            else:
                for j in range(k):
                    total += np.exp((val[j] - val[0]) * scale)
            for j in range(k):
                out_ids[t, layer, j] = idx[j]
                out_gates[t, layer, j] = np.exp((val[j] - val[0]) * scale) / total
            # lookahead: the router of layer + d applied to this layer's state (no noise)
            for d in range(1, n_look + 1):
                target = layer + d
                if target < n_layers:
                    _router_logits(router, bias, target, h, ahead)
                    _top_k(ahead, idx, val)
                    for j in range(k):
                        out_look[d - 1, t, layer, j] = idx[j]
            if width:
                if feature_noise > 0.0:
                    _normals(state, table, draws, width)
                for j in range(width):
                    value = h[j]
                    if feature_noise > 0.0:
                        value += feature_noise * draws[j]
                    out_feat[t, layer, j] = value
        carry_request = request_id[t]
    return carry_request


@numba.njit(cache=True)
def predicted_sets(source_logits, k):  # pragma: no cover - compiled
    """Top-k ids per row of source_logits [N, E] -> [N, k]."""
    n = source_logits.shape[0]
    out = np.empty((n, k), np.int64)
    idx = np.empty(k, np.int64)
    val = np.empty(k)
    for i in range(n):
        _top_k(source_logits[i], idx, val)
        out[i] = idx
    return out


@numba.njit(cache=True)
def lookahead_overlap(predicted, source, fresh, noise_draws, bias, sigma,
                      corr):  # pragma: no cover - compiled
    """Mean |predicted ∩ true| / k over N sampled states.

    ``source`` [N, E] is W h_s (the target router on the source state), ``fresh`` [N, E] is W n
    for an independent n, so the target state h_t = corr h_s + sqrt(1 - corr^2) n gives logits
    corr * source + sqrt(1 - corr^2) * fresh + bias + sigma * noise_draws; ``predicted`` [N, k]
    holds the top-k of source + bias.
    """
    n, n_experts = source.shape
    k = predicted.shape[1]
    s = np.sqrt(max(0.0, 1.0 - corr * corr))
    logits = np.empty(n_experts)
    idx = np.empty(k, np.int64)
    val = np.empty(k)
    hits = 0
    for i in range(n):
        for e in range(n_experts):
            logits[e] = corr * source[i, e] + s * fresh[i, e] + bias[e] + sigma * noise_draws[i, e]
        _top_k(logits, idx, val)
        hits += set_overlap(idx, predicted[i])
    return hits / (n * k)


@numba.njit(cache=True, fastmath=_FAST)
def route_states(states, router, bias, sigma, noise, k):  # pragma: no cover - compiled
    """Top-k ids [N, k] of one layer's router [E, D] (bias [E]) applied to states [N, D] plus
    sigma * noise [N, E]: the routing step of :func:`route_tokens` for sampled states."""
    n, dim = states.shape
    n_experts = router.shape[0]
    out = np.empty((n, k), np.int64)
    logits = np.empty(n_experts)
    idx = np.empty(k, np.int64)
    val = np.empty(k)
    for i in range(n):
        for e in range(n_experts):
            acc = bias[e] + sigma * noise[i, e]
            for j in range(dim):
                acc += router[e, j] * states[i, j]
            logits[e] = acc
        _top_k(logits, idx, val)
        out[i] = idx
    return out


@numba.njit(cache=True, fastmath=_FAST)
def project(states, router):  # pragma: no cover - compiled
    """states [N, D] times router [E, D] transposed -> [N, E] (one thread; BLAS threads cost more
    than they save on these small products, above all on a busy machine)."""
    n, dim = states.shape
    n_experts = router.shape[0]
    out = np.empty((n, n_experts))
    for i in range(n):
        for e in range(n_experts):
            acc = 0.0
            for j in range(dim):
                acc += router[e, j] * states[i, j]
            out[i, e] = acc
    return out
