"""Small traces with controllable routing, for tests, benchmarks and examples.

Not a model of real routing (``traces.synthetic`` is); just enough structure for policies to
exploit - per-layer Zipf popularity, a preferred successor per expert between consecutive layers,
per-request preferences - and lookahead columns corrupted at an exactly known rate: each
lookahead entry is independently replaced, with probability ``lookahead_error``, by an expert
outside the true top-k of its target layer (and distinct within the row), so the top-k accuracy of
the columns at batch 1 is ``1 - lookahead_error`` in expectation.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from moe_offload_lab.traces.format import DECODE, NO_EXPERT, PREFILL, Trace
from moe_offload_lab.traces.spec import ModelSpec


def toy_spec(num_layers: int = 4, num_experts: int = 8, top_k: int = 2,
             name: str = "toy") -> ModelSpec:
    """A small ModelSpec (tiny hidden sizes; only the routing shape matters)."""
    return ModelSpec(name=name, num_layers=num_layers, num_experts=num_experts, top_k=top_k,
                     hidden_size=64, expert_intermediate_size=128)


def make_trace(spec: ModelSpec, tokens: int, *, requests: int = 1, seed: int = 0,
               skew: float = 1.0, layer_correlation: float = 2.0, request_bias: float = 1.0,
               lookahead: Iterable[int] = (1,), lookahead_error: float | dict[int, float] = 0.0,
               prefill_fraction: float = 0.25) -> Trace:
    """A trace of ``tokens`` tokens split into ``requests`` consecutive requests.

    ``skew``: Zipf exponent of each layer's popularity; ``layer_correlation``: logit bonus of the
    preferred successor of a token's first expert at the previous layer; ``request_bias``: scale
    of per-request logit offsets; ``lookahead``: distances with lookahead columns;
    ``lookahead_error``: corruption rate (one value, or one per distance).
    """
    rng = np.random.default_rng(seed)
    n_layers, n_experts, k = spec.num_moe_layers, spec.num_experts, spec.top_k
    requests = max(1, min(requests, tokens)) if tokens else 1
    sizes = np.full(requests, tokens // requests)
    sizes[: tokens % requests] += 1
    request_id = np.repeat(np.arange(requests, dtype=np.int32), sizes)  # [T]
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    position = (np.arange(tokens) - starts).astype(np.int32)  # [T]
    prompt = np.repeat(np.maximum(1, (sizes * prefill_fraction).astype(int)), sizes)
    phase = np.where(position < prompt, PREFILL, DECODE).astype(np.int8)  # [T]

    ranks = np.arange(1, n_experts + 1, dtype=np.float64)
    popularity = np.log(ranks ** -skew)  # [E]
    base = np.stack([rng.permutation(popularity) for _ in range(n_layers)])  # [L, E]
    successor = np.stack([rng.permutation(n_experts) for _ in range(n_layers)])  # [L, E]
    offsets = rng.normal(0.0, request_bias, size=(requests, n_layers, n_experts))  # [R, L, E]

    expert_ids = np.zeros((tokens, n_layers, k), dtype=np.int16)  # [T, L, k]
    gate_weights = np.zeros((tokens, n_layers, k), dtype=np.float32)  # [T, L, k]
    rows = np.arange(tokens)
    for layer in range(n_layers):
        logits = base[layer][None, :] + offsets[request_id, layer]  # [T, E]
        if layer > 0 and tokens:
            preferred = successor[layer - 1][expert_ids[:, layer - 1, 0]]  # [T]
            logits[rows, preferred] += layer_correlation
        noisy = logits + rng.gumbel(size=logits.shape)  # [T, E]
        top = np.argpartition(-noisy, k - 1, axis=1)[:, :k]  # [T, k] unordered
        order = np.argsort(-np.take_along_axis(noisy, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)  # [T, k] best first
        expert_ids[:, layer] = top
        chosen = np.take_along_axis(logits, top, axis=1)
        weights = np.exp(chosen - chosen.max(axis=1, keepdims=True))
        gate_weights[:, layer] = weights / weights.sum(axis=1, keepdims=True)

    columns = {}
    for d in lookahead:
        rate = lookahead_error.get(d, 0.0) if isinstance(lookahead_error, dict) else lookahead_error
        columns[int(d)] = _lookahead(expert_ids, int(d), float(rate), n_experts, rng)
    trace = Trace(spec=spec, request_id=request_id, position=position, phase=phase,
                  expert_ids=expert_ids, gate_weights=gate_weights, lookahead=columns,
                  provenance={"generator": "moe_offload_lab.policies.toy_traces", "seed": seed})
    trace.validate()
    return trace


def _lookahead(expert_ids: np.ndarray, d: int, rate: float, n_experts: int,
               rng: np.random.Generator) -> np.ndarray:
    tokens, n_layers, k = expert_ids.shape
    out = np.full((tokens, n_layers, k), NO_EXPERT, dtype=np.int16)  # [T, L, k]
    if d >= n_layers:
        return out
    truth = expert_ids[:, d:]  # [T, L-d, k]
    picks = truth.copy()
    if rate > 0:
        if n_experts < 2 * k:
            raise ValueError("corrupting lookahead needs num_experts >= 2 * top_k")
        for slot in range(k):
            hit = np.nonzero(rng.random(picks.shape[:2]) < rate)  # (token, layer) pairs
            todo = np.arange(hit[0].size)
            while todo.size:
                t, l = hit[0][todo], hit[1][todo]
                draw = rng.integers(0, n_experts, size=todo.size)
                clash = (draw[:, None] == truth[t, l]).any(axis=1)
                clash |= (draw[:, None] == picks[t, l]).any(axis=1)
                good = ~clash
                picks[t[good], l[good], slot] = draw[good]
                todo = todo[clash]
    out[:, : n_layers - d] = picks
    return out
