"""Measuring a policy's decision time per MoE layer, whole and per component.

A trace is replayed through the full engine call sequence of :mod:`policies.base` (begin_step,
on_layer, place, admit, evict, on_evict, prefetch, on_fetch_done, end_step) against a
:class:`~policies.cache.SlotCache` holding ``cache_fraction`` of the experts, with instant copies:
only the policy's own work and the replay's bookkeeping take time.

- **Whole policy** (:func:`policy_seconds`): the replay runs twice, once calling the policy and
  once re-applying the decisions it made (recorded in an untimed pass) with no policy calls; the
  difference of the two wall times (best of ``repeat``), over the layer visits, is the policy's
  own cost, call overhead included.
- **Per component** (:func:`component_seconds`): every method a composed policy calls on its
  components (the predictor's ``begin_step``/``observe``/``predict``, the planner's ``plan``, the
  rule's ``on_access``/``victims``/``admit``/``on_insert``/``on_remove``, ``place``, the admission
  rule's ``on_access``/``admit``) is wrapped by a timer; each component's summed time, less the
  timer's own cost per call (measured on an empty function), over the layer visits. What the
  whole policy costs beyond its components is the composed policy's own work (``glue``).

``moe-policy cost`` (:mod:`policies.cost_table`) and ``benchmarks/bench_policies.py`` use this.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from moe_offload_lab.policies.base import GPU, Policy
from moe_offload_lab.policies.cache import SlotCache
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import CostModel
from moe_offload_lab.policies.needs import consecutive_batches, step_experts
from moe_offload_lab.traces.format import Trace

CACHE_FRACTION = 0.25
#: the methods a composed policy calls on each kind of component
TIMED_METHODS = {
    "predictor": ("begin_step", "observe", "predict"),
    "planner": ("plan",),
    "replacement": ("on_access", "victims", "admit", "on_insert", "on_remove"),
    "placement": ("place",),
    "admission": ("on_access", "admit"),
}


class Workload:
    """Per step and layer, what the engine hands the policy (precomputed, as the simulator
    does), for ``trace`` in consecutive batches of ``batch`` tokens."""

    def __init__(self, trace: Trace, batch: int, cache_fraction: float = CACHE_FRACTION) -> None:
        spec = trace.spec
        self.spec = spec
        self.trace = trace
        self.batch = batch
        self.schedule = consecutive_batches(trace.num_tokens, batch)
        n_layers, n_experts = spec.num_moe_layers, spec.num_experts
        self.steps = []
        for rows in self.schedule:
            ids = trace.expert_ids[rows]  # [B, L, k]
            gates = trace.gate_weights[rows]  # [B, L, k]
            experts, tokens = step_experts(ids, n_experts)
            keys = [[layer * n_experts + e for e in experts[layer]] for layer in range(n_layers)]
            ahead = {d: columns[rows] for d, columns in trace.lookahead.items()}  # [B, L, k]
            layers = [(experts[layer], tokens[layer], keys[layer], ids[:, layer],
                       gates[:, layer], {d: a[:, layer] for d, a in ahead.items()})
                      for layer in range(n_layers)]
            self.steps.append((rows, trace.request_id[rows], trace.phase[rows], layers))
        self.slots = max(spec.top_k, math.floor(cache_fraction * spec.num_expert_keys))
        self.visits = len(self.steps) * n_layers


def run_policy(policy: Policy, work: Workload, record: list | None = None) -> float:
    """One replay calling the policy; returns wall seconds. ``record`` collects its decisions."""
    spec = work.spec
    n_experts = spec.num_experts
    policy.reset(spec, work.slots, CostModel.for_spec(spec), trace=work.trace,
                 schedule=work.schedule)
    cache = SlotCache(work.slots, n_experts, spec.num_moe_layers, policy.partition_slots)
    resident = cache.resident
    ctx = LayerContext(spec, cache)
    partitioned = cache.partition_slots is not None
    start = time.perf_counter()
    for step, (rows, request_ids, phase, layers) in enumerate(work.steps):
        ctx.begin_step(step, request_ids, phase, rows)
        policy.begin_step(ctx)
        for layer, (experts, tokens, keys, routing, gates, ahead) in enumerate(layers):
            ctx.set_layer(layer, experts, tokens, keys, routing, gates, ahead)
            policy.on_layer(ctx)
            missing = [key for key in keys if key not in resident]
            admitted = victims = ()
            if missing:
                where = policy.place(ctx, missing)
                admitted = [key for key in missing if where[key] == GPU and policy.admit(key, ctx)]
                need = len(admitted) - cache.free_slots(layer)
                if need > 0:
                    victims = list(policy.evict(cache, need, layer))
                    for key in victims:
                        cache.remove(key)
                        policy.on_evict(key)
                for key in admitted:
                    if cache.free_slots(layer) > 0:
                        cache.insert(key)
                        policy.on_fetch_done(key)
            plan = policy.prefetch(ctx)
            plan_keys = plan.keys
            plan_victims = ()
            if plan_keys:
                plan_victims = []
                for key_layer, need in _plan_needs(plan_keys, cache, n_experts, partitioned):
                    chosen = policy.evict(cache, need, key_layer)
                    plan_victims.extend(chosen)
                    for key in list(chosen):
                        cache.remove(key)
                        policy.on_evict(key)
                for key in plan_keys:
                    if cache.free_slots(key // n_experts) > 0:
                        cache.insert(key)
                        policy.on_fetch_done(key)
            if record is not None:
                record.append((tuple(admitted), tuple(victims), tuple(plan_keys),
                               tuple(plan_victims)))
        policy.end_step(ctx)
    return time.perf_counter() - start


def run_replay(work: Workload, record: list, partition_slots: list[int] | None) -> float:
    """The same replay re-applying recorded decisions, without policy calls."""
    spec = work.spec
    n_experts = spec.num_experts
    cache = SlotCache(work.slots, n_experts, spec.num_moe_layers, partition_slots)
    resident = cache.resident
    ctx = LayerContext(spec, cache)
    partitioned = cache.partition_slots is not None
    decisions = iter(record)
    start = time.perf_counter()
    for step, (rows, request_ids, phase, layers) in enumerate(work.steps):
        ctx.begin_step(step, request_ids, phase, rows)
        for layer, (experts, tokens, keys, routing, gates, ahead) in enumerate(layers):
            ctx.set_layer(layer, experts, tokens, keys, routing, gates, ahead)
            admitted, victims, plan_keys, plan_victims = next(decisions)
            missing = [key for key in keys if key not in resident]
            if missing:
                need = len(admitted) - cache.free_slots(layer)
                if need > 0:
                    for key in victims:
                        cache.remove(key)
                for key in admitted:
                    if cache.free_slots(layer) > 0:
                        cache.insert(key)
            if plan_keys:
                for _ in _plan_needs(plan_keys, cache, n_experts, partitioned):
                    pass
                for key in plan_victims:
                    cache.remove(key)
                for key in plan_keys:
                    if cache.free_slots(key // n_experts) > 0:
                        cache.insert(key)
    return time.perf_counter() - start


def _plan_needs(keys: Sequence[int], cache: SlotCache, n_experts: int,
                partitioned: bool) -> list[tuple[int, int]]:
    if not partitioned:
        need = len(keys) - cache.free_slots()
        return [(-1, need)] if need > 0 else []
    counts: dict[int, int] = {}
    for key in keys:
        counts[key // n_experts] = counts.get(key // n_experts, 0) + 1
    return [(layer, n - cache.free_slots(layer)) for layer, n in counts.items()
            if n - cache.free_slots(layer) > 0]


def policy_seconds(policy: Policy, work: Workload, repeat: int = 3) -> float:
    """The policy's seconds per layer visit (see the module docstring)."""
    record: list = []
    run_policy(policy, work, record)
    with_policy = min(run_policy(policy, work) for _ in range(repeat))
    replay = min(run_replay(work, record, policy.partition_slots) for _ in range(repeat))
    return max(with_policy - replay, 0.0) / work.visits


class _Timer:
    """Summed seconds and calls of one component's wrapped methods."""

    __slots__ = ("seconds", "calls")

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0


def _wrap(method: Callable[..., Any], timer: _Timer) -> Callable[..., Any]:
    clock = time.perf_counter

    def timed(*args: Any) -> Any:
        start = clock()
        out = method(*args)
        timer.seconds += clock() - start
        timer.calls += 1
        return out

    return timed


def timer_overhead_s(calls: int = 200_000) -> float:
    """Seconds a wrapped call adds to its component's measured time (an empty method's)."""
    timer = _Timer()
    empty = _wrap(lambda *args: None, timer)
    best = math.inf
    for _ in range(3):
        timer.seconds, timer.calls = 0.0, 0
        for _ in range(calls):
            empty(None)
        best = min(best, timer.seconds / calls)
    return best


def component_seconds(policy: Any, work: Workload, repeat: int = 3,
                      overhead_s: float | None = None) -> dict[str, float]:
    """Seconds per layer visit of each component of a composed ``policy`` (built fresh: its
    components' methods are wrapped), by kind (``predictor``, ``planner``...). Best of
    ``repeat`` replays per component."""
    overhead = timer_overhead_s() if overhead_s is None else overhead_s
    timers = {}
    for kind, methods in TIMED_METHODS.items():
        component = getattr(policy, kind)
        timer = timers[kind] = _Timer()
        for name in methods:
            setattr(component, name, _wrap(getattr(component, name), timer))
    best = dict.fromkeys(TIMED_METHODS, math.inf)
    for _ in range(repeat):
        for timer in timers.values():
            timer.seconds, timer.calls = 0.0, 0
        run_policy(policy, work)
        for kind, timer in timers.items():
            own = max(timer.seconds - timer.calls * overhead, 0.0)
            best[kind] = min(best[kind], own / work.visits)
    return best
