"""Helpers of the policy tests: tiny traces, hypothesis settings and a replay with copy delays
(the engines' protocol driven with copies that land some layers later). (A uniquely named
module: ``conftest`` names collide across test folders.)"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from hypothesis import HealthCheck, settings
from moe_offload_lab.policies import CostModel, LayerContext, SlotCache
from moe_offload_lab.policies.base import Policy
from moe_offload_lab.policies.needs import consecutive_batches, step_experts
from moe_offload_lab.policies.protocol import STREAM, LayerProtocol, Transfers
from moe_offload_lab.policies.toy_traces import toy_spec
from moe_offload_lab.traces.format import DECODE, Trace

#: hypothesis settings of the policy property tests (applied per test, not as a global profile)
policy_settings = settings(deadline=None, max_examples=40,
                           suppress_health_check=[HealthCheck.too_slow])


def sequence_trace(sequence: Sequence[Sequence[int]] | Sequence[int], num_experts: int = 8,
                   top_k: int = 1, num_layers: int = 1) -> Trace:
    """A trace whose token t uses ``sequence[t]`` at every layer (an int or k ids per token)."""
    spec = toy_spec(num_layers, num_experts, top_k)
    rows = [[s] if isinstance(s, int) else list(s) for s in sequence]
    ids = np.array(rows, dtype=np.int16).reshape(len(rows), 1, top_k)  # [T, 1, k]
    ids = np.repeat(ids, num_layers, axis=1)  # [T, L, k]
    n = len(rows)
    return Trace(spec=spec, request_id=np.zeros(n, np.int32), position=np.arange(n, dtype=np.int32),
                 phase=np.full(n, DECODE, np.int8), expert_ids=ids,
                 gate_weights=np.full(ids.shape, 1.0 / top_k, np.float32))


def random_trace(seed: int, tokens: int, num_layers: int, num_experts: int, top_k: int,
                 lookahead: Sequence[int] = (1,), error: float = 0.2,
                 requests: int = 2) -> Trace:
    """Random routing (arbitrary patterns) with lookahead columns corrupted at ``error``."""
    from moe_offload_lab.policies.toy_traces import make_trace

    rng = np.random.default_rng(seed)
    spec = toy_spec(num_layers, num_experts, top_k)
    skew = float(rng.uniform(0.0, 2.0))
    corr = float(rng.uniform(0.0, 4.0))
    can_corrupt = num_experts >= 2 * top_k
    return make_trace(spec, tokens, requests=requests, seed=seed, skew=skew,
                      layer_correlation=corr, lookahead=lookahead,
                      lookahead_error=error if can_corrupt else 0.0)


class _DelayedCopies(Transfers):
    """Copies that land 0..``max_delay`` layers after they start (streamed ones at once)."""

    def __init__(self, rng: random.Random, max_delay: int) -> None:
        self.rng, self.max_delay = rng, max_delay
        self.now = 0  # the current layer's time: step * L + layer
        self.due: dict[int, int] = {}  # key -> time its copy lands, in issue order

    def start_copy(self, key: int, purpose: str, layer: int) -> int | None:
        if purpose == STREAM:
            return None
        self.due[key] = self.now + self.rng.randint(0, self.max_delay)
        return key

    def cancel_copy(self, handle: int) -> None:
        del self.due[handle]


def delayed_replay(policy: Policy, trace: Trace, capacity_slots: int, batch: int = 1,
                   seed: int = 0, max_delay_layers: int = 2) -> dict[str, int]:
    """Replay with copies that complete 0..max_delay_layers layers after they start.

    Drives the engines' protocol (:class:`policies.protocol.LayerProtocol`), which checks every
    decision against the contract (keys valid, evictions never touch the current layer's keys or
    in-flight keys, plans never name present keys, cancellations only name in-flight prefetches)
    and raises :class:`~policies.protocol.PolicyViolation` otherwise. Returns counters.
    """
    spec = trace.spec
    n_layers, n_experts = spec.num_moe_layers, spec.num_experts
    schedule = consecutive_batches(trace.num_tokens, batch)
    policy.reset(spec, capacity_slots, CostModel.for_spec(spec), trace=trace, schedule=schedule)
    cache = SlotCache(capacity_slots, n_experts, n_layers, policy.partition_slots)
    copies = _DelayedCopies(random.Random(seed), max_delay_layers)
    protocol = LayerProtocol(policy, cache, copies)
    ctx = LayerContext(spec, cache)

    def land(keys: Sequence[int]) -> None:
        for key in keys:
            del copies.due[key]
            protocol.copy_done(key)

    accesses = 0
    for step, rows in enumerate(schedule):
        ids = trace.expert_ids[rows]
        experts, tokens = step_experts(ids, n_experts)
        ahead = {d: a[rows] for d, a in trace.lookahead.items()}
        ctx.begin_step(step, trace.request_id[rows], trace.phase[rows], rows)
        protocol.begin_step(ctx)
        for layer in range(n_layers):
            copies.now = now = step * n_layers + layer
            land([k for k, t in copies.due.items() if t <= now])
            ctx.set_layer(layer, experts[layer], tokens[layer], None, ids[:, layer],
                          trace.gate_weights[rows][:, layer],
                          {d: a[:, layer] for d, a in ahead.items()})
            _, wait, _ = protocol.layer(ctx)
            accesses += len(ctx.keys)
            land([k for k in wait if k in copies.due])  # the layer runs once they have landed
        protocol.end_step(ctx)
    return {"hits": protocol.hits(accesses), "accesses": accesses,
            "cancelled": protocol.n_cancelled, "prefetched": protocol.n_prefetch,
            "evicted": protocol.n_evicted}
