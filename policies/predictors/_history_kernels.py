"""Numba kernels of the history predictor (learning and scoring), one call per layer."""

from __future__ import annotations

import numba


@numba.njit(cache=True)
def observe(pairs, sources, buffer, layer, routing, horizon, n_experts):  # pragma: no cover
    """Store ``routing`` [B, k] as layer ``layer`` and count transitions from layers l-1..l-h.

    pairs [h, L*E, E], sources [h, L*E], buffer [L, B_max, k].
    """
    batch, k = routing.shape
    for b in range(batch):
        for j in range(k):
            buffer[layer, b, j] = routing[b, j]
    for i in range(min(horizon, layer)):
        source_layer = layer - i - 1
        base = source_layer * n_experts
        for b in range(batch):
            for j in range(k):
                source = base + buffer[source_layer, b, j]
                sources[i, source] += 1.0
                for jj in range(k):
                    pairs[i, source, routing[b, jj]] += 1.0


@numba.njit(cache=True)
def predict(pairs, sources, routing, layer, n_layers, n_experts, horizon, limit, scratch,
            out_experts, out_scores, out_counts):  # pragma: no cover
    """Per distance: the ``limit`` experts of highest batch-combined mean conditional frequency.

    routing [B, k]; scratch [E]; out_experts [h, E] int64; out_scores [h, E]; out_counts [h].
    Order: falling score, ties to the lower expert id.
    """
    batch, k = routing.shape
    base = layer * n_experts
    for i in range(horizon):
        out_counts[i] = 0
        if layer + i + 1 >= n_layers:
            continue
        for e in range(n_experts):
            scratch[e] = 0.0
        seen = 0.0
        for b in range(batch):
            for j in range(k):
                source = base + routing[b, j]
                n = sources[i, source]
                if n > 0.0:
                    seen += 1.0
                    inverse = 1.0 / n
                    for e in range(n_experts):
                        scratch[e] += pairs[i, source, e] * inverse
        if seen == 0.0:
            continue
        positive = 0
        for e in range(n_experts):
            p = scratch[e] / seen  # mean over (token, expert) pairs: per-token frequency
            if p > 1.0:
                p = 1.0
            if batch > 1:
                p = 1.0 - (1.0 - p) ** batch
            scratch[e] = p
            if p > 0.0:
                positive += 1
        want = min(limit, positive)
        # one pass, keeping the best ``want`` in insertion order (ties: lower id stays first)
        filled = 0
        for e in range(n_experts):
            p = scratch[e]
            if p <= 0.0 or (filled == want and p <= out_scores[i, want - 1]):
                continue
            position = filled if filled < want else want - 1
            while position > 0 and out_scores[i, position - 1] < p:
                if position < want:
                    out_scores[i, position] = out_scores[i, position - 1]
                    out_experts[i, position] = out_experts[i, position - 1]
                position -= 1
            out_scores[i, position] = p
            out_experts[i, position] = e
            if filled < want:
                filled += 1
        out_counts[i] = want
