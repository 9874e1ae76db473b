"""Information-theoretic structure of routing: mutual information and conditional entropy.

All quantities are plug-in (maximum-likelihood) estimates in bits, built on the project's
expert-selection variable ``X_l`` (see :mod:`traces.analysis.entropy`: one top-k slot of a token
at MoE layer ``l``, each of the ``k`` slots weighted ``1/k``).

Cross-layer mutual information ``I(X_l ; X_{l+d})``
    The joint distribution pairs every slot of a token at layer ``l`` with every slot of the same
    token at layer ``l + d``: ``k * k`` pairs per token, each weighted ``1/(k*k)``. Its marginals
    are exactly the layers' selection frequencies. ``I = H(X_l) + H(X_{l+d}) - H(X_l, X_{l+d})``.
    Reported for ``l = 0 .. L-d-1`` (a list of length ``L - d`` indexed by the source layer).

Top-1 cross-layer mutual information ``I(T_l ; T_{l+d})``
    ``T_l`` is the token's top-1 expert at layer ``l`` (the slot with the largest gate weight).
    Pairing every slot with every slot dilutes the dependence between two layers' routing (for
    Mixtral, top-2 of 8, the slot-pair measure stays below about 0.6 bits even when layer
    ``l + 1`` is a function of layer ``l``); the top-1 measure is the one the synthetic presets are
    calibrated to against Prophet's published 0.62 bits between consecutive layers.

Adjacent-token mutual information ``I(X_l(t) ; X_l(t+1))``
    The same construction over pairs of adjacent tokens of a request at one layer. *Adjacent*
    means successive rows of the same ``request_id``: when each request occupies a contiguous
    block of rows (the usual layout) these are consecutive rows with the same request id; when
    requests are interleaved, a token is paired with the previous row of its own request (see
    :func:`adjacent_pairs`).

Conditional entropy ``H(X_l | S_{l-1}, ..., S_{l-c})``
    ``S_j`` is the token's whole top-k *set* at layer ``j`` (order ignored), and the context is the
    tuple of the previous ``c`` sets. Sets are encoded as integer codes (sorted ids packed in mixed
    radix, then densified) and the ``c`` codes are combined into one dense context code. The
    plug-in estimate is ``H(context, X_l) - H(context)`` with ``X_l`` weighted ``1/k`` per slot;
    defined for ``l >= c``. *Exploitable bits* of a layer are ``H(X_l) - H(X_l | context)``: how
    much of the routing uncertainty the previous ``c`` layers' choices explain (Prophet reports
    about 4.1 of 7 bits for its model).

    Caveat: the plug-in estimate is biased *downward* (and the exploitable bits upward) when the
    number of distinct contexts is not small compared with the number of tokens -- in the extreme
    where every context occurs once, ``H(X_l | context)`` collapses to ``log2 k`` whatever the
    routing. The number of distinct contexts is returned with every estimate so the reader can
    judge; compare ``contexts`` with the token count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from moe_offload_lab.traces.analysis._common import entropy_of_counts, layer_major, routing
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import Trace


# ---- kernels ------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _joint_tables(lm, rows_a, rows_b, layers_a, layers_b, num_experts):  # pragma: no cover
    """Joint count tables [P, E, E] from layer-major routing ``lm`` [L, T, k]: table p pairs
    layer ``layers_a[p]`` of row ``rows_a[r]`` with layer ``layers_b[p]`` of row ``rows_b[r]``,
    all k*k slot pairs. Empty ``rows_a`` means the identity (each token with itself)."""
    n_pairs = layers_a.shape[0]
    k = lm.shape[2]
    identity = rows_a.shape[0] == 0
    n_rows = lm.shape[1] if identity else rows_a.shape[0]
    out = np.zeros((n_pairs, num_experts, num_experts), np.int64)
    for p in range(n_pairs):
        a = lm[layers_a[p]]
        b = lm[layers_b[p]]
        for r in range(n_rows):
            ta = r if identity else rows_a[r]
            tb = r if identity else rows_b[r]
            for i in range(k):
                ea = a[ta, i]
                for j in range(k):
                    out[p, ea, b[tb, j]] += 1
    return out


@numba.njit(cache=True, nogil=True)
def _pack_sets(layer_ids, num_experts, start, width, out):  # pragma: no cover - compiled
    """out[t] = sorted ids of slots ``start .. start+width-1`` of token t in mixed radix
    (``layer_ids`` [T, k] is one layer's routing)."""
    n_tokens, k = layer_ids.shape
    buf = np.empty(k, np.int64)
    for t in range(n_tokens):
        for s in range(k):  # insertion sort of k small ints
            v = np.int64(layer_ids[t, s])
            j = s
            while j > 0 and buf[j - 1] > v:
                buf[j] = buf[j - 1]
                j -= 1
            buf[j] = v
        code = np.int64(0)
        for s in range(start, min(k, start + width)):
            code = code * num_experts + buf[s]
        out[t] = code


@numba.njit(cache=True, nogil=True)
def _densify(a, b):  # pragma: no cover - compiled
    """Dense codes 0 .. n-1 (first-appearance order) of the pairs (a[i], b[i]) of non-negative
    int64s; returns (codes int64 [N], n). A direct table when the pair universe is small, an
    open-addressing hash table (grown at half load) otherwise."""
    n = a.shape[0]
    codes = np.empty(n, np.int64)
    if n == 0:
        return codes, 0
    a_max = np.int64(0)
    b_max = np.int64(0)
    for i in range(n):
        a_max = max(a_max, a[i])
        b_max = max(b_max, b[i])
    nb = b_max + 1
    count = 0
    if a_max < (1 << 24) and nb < (1 << 24) and (a_max + 1) * nb <= max(1 << 16, 4 * n):
        table = np.full((a_max + 1) * nb, -1, np.int64)
        for i in range(n):
            slot = a[i] * nb + b[i]
            code = table[slot]
            if code < 0:
                code = count
                table[slot] = code
                count += 1
            codes[i] = code
        return codes, count
    size = 1024
    key_a = np.full(size, -1, np.int64)
    key_b = np.empty(size, np.int64)
    value = np.empty(size, np.int64)
    for i in range(n):
        if 2 * (count + 1) > size:  # grow and rehash
            size *= 2
            new_a = np.full(size, -1, np.int64)
            new_b = np.empty(size, np.int64)
            new_v = np.empty(size, np.int64)
            for j in range(size // 2):
                if key_a[j] >= 0:
                    h = (key_a[j] * -7046029254386353131 + key_b[j] * 7162192113224491033)
                    h ^= h >> 29
                    pos = h & (size - 1)
                    while new_a[pos] >= 0:
                        pos = (pos + 1) & (size - 1)
                    new_a[pos] = key_a[j]
                    new_b[pos] = key_b[j]
                    new_v[pos] = value[j]
            key_a, key_b, value = new_a, new_b, new_v
        x = a[i]
        y = b[i]
        h = (x * -7046029254386353131 + y * 7162192113224491033)
        h ^= h >> 29
        pos = h & (size - 1)
        while True:
            if key_a[pos] < 0:
                key_a[pos] = x
                key_b[pos] = y
                value[pos] = count
                codes[i] = count
                count += 1
                break
            if key_a[pos] == x and key_b[pos] == y:
                codes[i] = value[pos]
                break
            pos = (pos + 1) & (size - 1)
    return codes, count


@numba.njit(cache=True, nogil=True)
def _conditional_entropy(context, n_contexts, layer_ids, num_experts):  # pragma: no cover
    """Plug-in H(X | context) in bits: H(context, X) - H(context), X weighted 1/k, for one
    layer's routing ``layer_ids`` [T, k].

    Small ``n_contexts * E``: one pass into a dense joint count table. Otherwise the tokens are
    grouped by context (counting sort) and each group's experts counted in a scratch row.
    """
    n_tokens, k = layer_ids.shape
    total = n_tokens * k
    joint_nlogn = 0.0
    context_nlogn = 0.0
    per_context = np.zeros(n_contexts, np.int64)
    for t in range(n_tokens):
        per_context[context[t]] += 1
    for c in range(n_contexts):
        m = per_context[c]
        if m > 1:
            context_nlogn += m * np.log2(m)
    if n_contexts * num_experts <= max(1 << 21, 2 * total):
        table = np.zeros(n_contexts * num_experts, np.int64)
        for t in range(n_tokens):
            row = context[t] * num_experts
            for s in range(k):
                table[row + layer_ids[t, s]] += 1
        for j in range(table.shape[0]):
            m = table[j]
            if m > 1:
                joint_nlogn += m * np.log2(m)
    else:
        start = np.zeros(n_contexts + 1, np.int64)
        for c in range(n_contexts):
            start[c + 1] = start[c] + per_context[c]
        fill = start[:-1].copy()
        order = np.empty(n_tokens, np.int64)
        for t in range(n_tokens):
            c = context[t]
            order[fill[c]] = t
            fill[c] += 1
        scratch = np.zeros(num_experts, np.int64)
        touched = np.empty(num_experts, np.int64)
        for c in range(n_contexts):
            lo = start[c]
            hi = start[c + 1]
            if hi - lo < 2:  # a single token: k distinct experts, each counted once
                continue
            n_touched = 0
            for r in range(lo, hi):
                t = order[r]
                for s in range(k):
                    e = layer_ids[t, s]
                    if scratch[e] == 0:
                        touched[n_touched] = e
                        n_touched += 1
                    scratch[e] += 1
            for j in range(n_touched):
                e = touched[j]
                m = scratch[e]
                if m > 1:
                    joint_nlogn += m * np.log2(m)
                scratch[e] = 0
    h_joint = np.log2(total) - joint_nlogn / total
    h_context = np.log2(n_tokens) - context_nlogn / n_tokens
    return h_joint - h_context


# ---- helpers ------------------------------------------------------------------------------------
def layer_major_routing(trace: Trace) -> np.ndarray:
    """``expert_ids`` as a layer-major int16 copy [L, T, k].

    The functions below that take ``layers=`` accept it to share one copy between measures.
    """
    return layer_major(routing(trace))


def _layers(trace: Trace, layers: np.ndarray | None) -> np.ndarray:
    if layers is None:
        return layer_major_routing(trace)
    expected = (trace.spec.num_moe_layers, trace.num_tokens, trace.spec.top_k)
    if layers.shape != expected or layers.dtype != np.int16 or not layers.flags.c_contiguous:
        raise ConfigError(f"layers must be a C-contiguous int16 array of shape {expected}")
    if layers.size and (layers.min() < 0 or layers.max() >= trace.spec.num_experts):
        raise ConfigError(f"layers hold expert ids outside [0, {trace.spec.num_experts})")
    return layers


def adjacent_pairs(request_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(earlier, later)`` of adjacent token pairs: successive rows of one request.

    For requests stored as contiguous blocks these are the consecutive rows ``(t, t + 1)`` with
    ``request_id[t] == request_id[t + 1]``; otherwise each row is paired with the previous row of
    the same request (a stable sort by request id). int64 arrays, sorted by the later row when the
    blocks are contiguous.
    """
    rid = np.asarray(request_id)
    if rid.size < 2:
        empty = np.empty(0, np.int64)
        return empty, empty
    change = np.flatnonzero(rid[1:] != rid[:-1]) + 1
    heads = rid[np.concatenate(([0], change))]
    if np.unique(heads).size == heads.size:  # contiguous blocks
        earlier = np.flatnonzero(rid[1:] == rid[:-1]).astype(np.int64)
        return earlier, earlier + 1
    order = np.argsort(rid, kind="stable")
    same = rid[order[1:]] == rid[order[:-1]]
    return order[:-1][same].astype(np.int64), order[1:][same].astype(np.int64)


def mutual_information_bits(joint: np.ndarray) -> np.ndarray:
    """``I(A; B)`` in bits from joint count tables ``[..., E, E]``; NaN for an empty table."""
    joint = np.asarray(joint, dtype=np.float64)
    h_a = entropy_of_counts(joint.sum(axis=-1))
    h_b = entropy_of_counts(joint.sum(axis=-2))
    h_ab = entropy_of_counts(joint.reshape(*joint.shape[:-2], -1))
    return np.maximum(h_a + h_b - h_ab, 0.0)


def cross_layer_joint(trace: Trace, distance: int, *,
                      layers: np.ndarray | None = None) -> np.ndarray:
    """Joint count tables [L - d, E, E] of ``(X_l, X_{l+d})`` over all k*k slot pairs."""
    if distance < 1:
        raise ConfigError(f"layer distance must be at least 1, got {distance}")
    lm = _layers(trace, layers)
    src = np.arange(max(lm.shape[0] - distance, 0), dtype=np.int64)
    empty = np.empty(0, np.int64)
    return _joint_tables(lm, empty, empty, src, src + distance, trace.spec.num_experts)


def top1_experts(trace: Trace) -> np.ndarray:
    """The expert with the largest gate weight per token and layer -> [T, L] int64."""
    best = trace.gate_weights.argmax(axis=2)[:, :, None]  # [T, L, 1]
    return np.take_along_axis(trace.expert_ids, best, axis=2)[:, :, 0].astype(np.int64)


def top1_cross_layer_mutual_information(trace: Trace, max_distance: int = 3
                                        ) -> dict[int, np.ndarray]:
    """``{d: [L - d]}``: ``I(T_l ; T_{l+d})`` between top-1 experts, ``d = 1 .. max_distance``."""
    if max_distance < 1:
        raise ConfigError(f"layer distance must be at least 1, got {max_distance}")
    top1 = top1_experts(trace)  # [T, L]
    n_layers, num_experts = trace.spec.num_moe_layers, trace.spec.num_experts
    out: dict[int, np.ndarray] = {}
    for d in range(1, min(max_distance, n_layers - 1) + 1):
        joint = np.empty((n_layers - d, num_experts, num_experts), np.int64)  # [L-d, E, E]
        for layer in range(n_layers - d):
            cells = top1[:, layer] * num_experts + top1[:, layer + d]
            joint[layer] = np.bincount(cells, minlength=num_experts**2).reshape(
                num_experts, num_experts)
        out[d] = mutual_information_bits(joint)
    return out


def adjacent_joint(trace: Trace, pairs: tuple[np.ndarray, np.ndarray] | None = None, *,
                   layers: np.ndarray | None = None) -> np.ndarray:
    """Joint count tables [L, E, E] of ``(X_l(t), X_l(t+1))`` over adjacent token pairs."""
    earlier, later = adjacent_pairs(trace.request_id) if pairs is None else pairs
    n_layers, num_experts = trace.spec.num_moe_layers, trace.spec.num_experts
    if len(earlier) == 0:
        return np.zeros((n_layers, num_experts, num_experts), np.int64)
    earlier = np.ascontiguousarray(earlier, np.int64)
    later = np.ascontiguousarray(later, np.int64)
    if earlier.shape != later.shape or earlier.ndim != 1 \
            or min(earlier.min(), later.min()) < 0 \
            or max(earlier.max(), later.max()) >= trace.num_tokens:
        raise ConfigError("pairs must be two equally long 1-D arrays of row indices")
    lm = _layers(trace, layers)
    index = np.arange(n_layers, dtype=np.int64)
    return _joint_tables(lm, earlier, later, index, index, num_experts)


# ---- public measures ----------------------------------------------------------------------------
def cross_layer_mutual_information(trace: Trace, max_distance: int = 3, *,
                                   layers: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """``{d: I(X_l ; X_{l+d}) per source layer l = 0 .. L-d-1}`` for ``d = 1 .. max_distance``.

    Distances ``d >= L`` have no layer pair and are left out. Values in bits, float64 arrays.
    ``layers`` (from :func:`layer_major_routing`) may be passed to share the layer-major copy.
    """
    n_layers = trace.spec.num_moe_layers
    distances = [d for d in range(1, max_distance + 1) if d < n_layers]
    if not distances:
        return {}
    lm = _layers(trace, layers)
    return {d: mutual_information_bits(cross_layer_joint(trace, d, layers=lm)) for d in distances}


def adjacent_mutual_information(trace: Trace, *, joint: np.ndarray | None = None) -> np.ndarray:
    """``I(X_l(t) ; X_l(t+1))`` per MoE layer over adjacent tokens of a request (bits, [L]).

    NaN everywhere when no request has two tokens. ``joint`` may be passed from
    :func:`adjacent_joint` to avoid recomputing it.
    """
    return mutual_information_bits(adjacent_joint(trace) if joint is None else joint)


def set_codes(trace: Trace, layer: int) -> tuple[np.ndarray, int]:
    """Dense integer code of every token's top-k set at ``layer`` (equal sets, equal codes).

    Returns ``(codes int64 [T], number of distinct sets)``.
    """
    layer_ids = np.ascontiguousarray(routing(trace)[:, layer, :])
    return _set_codes(layer_ids, trace.spec.num_experts)


def _set_codes(layer_ids: np.ndarray, num_experts: int) -> tuple[np.ndarray, int]:
    n_tokens, k = layer_ids.shape
    width = 1  # ids per packed chunk: num_experts ** width must stay below 2**62
    while width < k and num_experts ** (width + 1) < (1 << 62):
        width += 1
    packed = np.empty(n_tokens, np.int64)
    codes = None
    count = 0
    for start in range(0, k, width):
        _pack_sets(layer_ids, num_experts, start, width, packed)
        if codes is None:
            codes, count = _densify(packed, np.zeros(n_tokens, np.int64))
        else:
            codes, count = _densify(codes, packed)
    return codes, int(count)


@dataclass(frozen=True)
class ConditionalEntropy:
    """``H(X_l | S_{l-1}, ..., S_{l-c})`` per MoE layer for one context length ``c``.

    ``per_layer`` (bits) and ``exploitable`` (``H(X_l)`` minus it) are NaN for ``l < c``;
    ``contexts[l]`` is the number of distinct contexts at layer ``l`` (0 for ``l < c``).
    """

    context_layers: int
    per_layer: np.ndarray
    exploitable: np.ndarray
    contexts: np.ndarray


def conditional_entropy(trace: Trace, context_layers: int = 3, *,
                        marginal: np.ndarray | None = None,
                        layers: np.ndarray | None = None) -> dict[int, ConditionalEntropy]:
    """Conditional entropy of each layer given the previous ``c`` layers' sets, ``c = 1 .. C``.

    Context lengths ``c >= L`` (no layer has that many predecessors) are left out. ``marginal``
    (``H(X_l)`` per layer, from :func:`traces.analysis.entropy.entropy_bits`) and ``layers``
    (from :func:`layer_major_routing`) may be passed to avoid recomputing them. See the module
    docstring for the estimator and its bias.
    """
    if context_layers < 1:
        raise ConfigError(f"context_layers must be at least 1, got {context_layers}")
    n_layers, num_experts = trace.spec.num_moe_layers, trace.spec.num_experts
    if marginal is None:
        from moe_offload_lab.traces.analysis.entropy import entropy_bits
        marginal = entropy_bits(trace)
    lengths = [c for c in range(1, context_layers + 1) if c < n_layers]
    per_layer = {c: np.full(n_layers, np.nan) for c in lengths}
    contexts = {c: np.zeros(n_layers, np.int64) for c in lengths}
    if trace.num_tokens and lengths:
        lm = _layers(trace, layers)
        codes: dict[int, tuple[np.ndarray, int]] = {}  # set codes of the layers still needed
        for layer in range(1, n_layers):
            context, n_context = None, 0
            for c in lengths:
                if layer < c:
                    break
                src = layer - c
                if src not in codes:
                    codes[src] = _set_codes(lm[src], num_experts)
                code, n_code = codes[src]
                if context is None:
                    context, n_context = code, n_code
                else:
                    context, n_context = _densify(context, code)
                per_layer[c][layer] = _conditional_entropy(context, int(n_context), lm[layer],
                                                           num_experts)
                contexts[c][layer] = n_context
            codes.pop(layer - lengths[-1], None)
    return {c: ConditionalEntropy(c, per_layer[c], np.asarray(marginal) - per_layer[c],
                                  contexts[c]) for c in lengths}
