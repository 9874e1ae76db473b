"""Helpers of the policy tests: tiny traces, hypothesis settings and a reference engine with copy
delays. (A uniquely named module: ``conftest`` names collide across test folders.)"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from hypothesis import HealthCheck, settings
from moe_offload_lab.policies import GPU, CostModel, LayerContext, SlotCache
from moe_offload_lab.policies.base import Policy
from moe_offload_lab.policies.keys import is_valid_key
from moe_offload_lab.policies.needs import consecutive_batches, step_experts
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


class ContractError(AssertionError):
    """A policy broke the engine contract."""


def delayed_replay(policy: Policy, trace: Trace, capacity_slots: int, batch: int = 1,
                   seed: int = 0, max_delay_layers: int = 2) -> dict[str, int]:
    """Replay with copies that complete 0..max_delay_layers layers after they start.

    Checks every decision against the contract (keys valid, evictions never touch the current
    layer's keys or in-flight keys, plans never name present keys, cancellations only name
    in-flight keys) and raises ContractError otherwise. Returns counters.
    """
    spec = trace.spec
    n_layers, n_experts = spec.num_moe_layers, spec.num_experts
    schedule = consecutive_batches(trace.num_tokens, batch)
    policy.reset(spec, capacity_slots, CostModel.for_spec(spec), trace=trace, schedule=schedule)
    cache = SlotCache(capacity_slots, n_experts, n_layers, policy.partition_slots)
    ctx = LayerContext(spec, cache)
    rng = random.Random(seed)
    pending: dict[int, int] = {}  # key -> time its copy completes
    counts = {"hits": 0, "accesses": 0, "cancelled": 0, "prefetched": 0, "evicted": 0}

    def complete(now: int, force: Sequence[int] = ()) -> None:
        for key in [k for k, t in pending.items() if t <= now or k in force]:
            del pending[key]
            cache.complete_fetch(key)
            policy.on_fetch_done(key)

    def evict(need: int, layer: int, current: Sequence[int]) -> None:
        victims = list(policy.evict(cache, need, layer))
        if len(victims) > need or len(set(victims)) != len(victims):
            raise ContractError(f"evict({need}) returned {victims}")
        for key in victims:
            if not is_valid_key(key, n_layers, n_experts):
                raise ContractError(f"evicted invalid key {key!r}")
            if key in cache.in_flight:
                raise ContractError(f"evicted in-flight key {key}")
            if key not in cache.resident:
                raise ContractError(f"evicted non-resident key {key}")
            if key in current:
                raise ContractError(f"evicted key {key} needed by the current layer")
            cache.remove(key)
            policy.on_evict(key)
            counts["evicted"] += 1

    for step, rows in enumerate(schedule):
        ids = trace.expert_ids[rows]
        experts, tokens = step_experts(ids, n_experts)
        ahead = {d: a[rows] for d, a in trace.lookahead.items()}
        ctx.begin_step(step, trace.request_id[rows], trace.phase[rows], rows)
        policy.begin_step(ctx)
        for layer in range(n_layers):
            now = step * n_layers + layer
            complete(now)
            keys = [layer * n_experts + e for e in experts[layer]]
            ctx.set_layer(layer, experts[layer], tokens[layer], keys, ids[:, layer],
                          trace.gate_weights[rows][:, layer],
                          {d: a[:, layer] for d, a in ahead.items()})
            policy.on_layer(ctx)
            counts["accesses"] += len(keys)
            counts["hits"] += sum(1 for k in keys if k in cache.resident)
            missing = [k for k in keys if k not in cache.resident and k not in cache.in_flight]
            if missing:
                where = policy.place(ctx, missing)
                if set(where) != set(missing) or not set(where.values()) <= {"gpu", "cpu"}:
                    raise ContractError(f"place() answered {dict(where)} for {missing}")
                fetch = [k for k in missing if where[k] == GPU and policy.admit(k, ctx)]
                need = len(fetch) - cache.free_slots(layer)
                if need > 0:
                    evict(need, layer, keys)
                for key in fetch:
                    if cache.free_slots(layer) > 0:
                        cache.start_fetch(key)
                        pending[key] = now + rng.randint(0, max_delay_layers)
            plan = policy.prefetch(ctx)
            for key in plan.cancel:
                if key not in cache.in_flight:
                    raise ContractError(f"cancelled key {key}, which is not in flight")
                if key in keys:
                    raise ContractError(f"cancelled key {key}, which the current layer needs")
            for key in list(plan.cancel):
                del pending[key]
                cache.remove(key)
                policy.on_evict(key)
                counts["cancelled"] += 1
            plan_keys = list(plan.keys)
            for key in plan_keys:
                if not is_valid_key(key, n_layers, n_experts):
                    raise ContractError(f"prefetch of invalid key {key!r}")
                if key in cache.resident or key in cache.in_flight:
                    raise ContractError(f"prefetch of present key {key}")
            if len(set(plan_keys)) != len(plan_keys):
                raise ContractError(f"prefetch plan repeats keys: {plan_keys}")
            if plan_keys:
                if cache.partition_slots is None:
                    need = len(plan_keys) - cache.free_slots()
                    if need > 0:
                        evict(need, -1, keys)
                else:
                    for key_layer in sorted({k // n_experts for k in plan_keys}):
                        wanted = sum(1 for k in plan_keys if k // n_experts == key_layer)
                        need = wanted - cache.free_slots(key_layer)
                        if need > 0:
                            evict(need, key_layer, keys)
                for key in plan_keys:
                    if cache.free_slots(key // n_experts) > 0:
                        cache.start_fetch(key)
                        pending[key] = now + rng.randint(0, max_delay_layers)
                        counts["prefetched"] += 1
            # the layer runs once the keys it needs have arrived
            complete(now, force=[k for k in keys if k in pending])
        policy.end_step(ctx)
    return counts
