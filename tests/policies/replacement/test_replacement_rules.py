"""Replacement rules on arbitrary cache states: valid victims, never current or in-flight keys."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from moe_offload_lab.policies import CostModel, LayerContext, SlotCache, build_policy
from moe_offload_lab.policies.evaluation import evaluate
from moe_offload_lab.policies.needs import consecutive_batches, step_experts
from moe_offload_lab.policies.registry import REPLACEMENTS
from policy_testing import policy_settings, random_trace, sequence_trace

RULES = REPLACEMENTS.names()


@policy_settings
@given(rule=st.sampled_from(RULES), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_evict_never_touches_current_or_in_flight_keys(rule: str, seed: int,
                                                       data: st.DataObject) -> None:
    n_layers, n_experts, top_k = data.draw(st.integers(1, 4)), data.draw(st.integers(2, 8)), 1
    trace = random_trace(seed, 12, n_layers, n_experts, top_k, lookahead=(1,))
    n_keys = n_layers * n_experts
    capacity = data.draw(st.integers(n_layers, n_keys))
    policy = build_policy({"name": rule, "horizon": 1, "replacement": {"name": rule},
                           "predictor": {"name": "gate-lookahead"},
                           "planner": {"name": "next-layer"}})
    schedule = consecutive_batches(trace.num_tokens, 1)
    policy.reset(trace.spec, capacity, CostModel.for_spec(trace.spec), trace=trace,
                 schedule=schedule)
    cache = SlotCache(capacity, n_experts, n_layers, policy.partition_slots)
    rng = np.random.default_rng(seed)
    for key in rng.permutation(n_keys).tolist():
        if cache.free_slots(key // n_experts) > 0:
            if rng.random() < 0.3:
                cache.start_fetch(key)  # in flight: the rule must not pick it
            else:
                cache.insert(key)
                policy.on_fetch_done(key)
    step = data.draw(st.integers(0, len(schedule) - 1))
    layer = data.draw(st.integers(0, n_layers - 1))
    rows = schedule[step]
    experts, tokens = step_experts(trace.expert_ids[rows], n_experts)
    ctx = LayerContext(trace.spec, cache)
    ctx.begin_step(step, trace.request_id[rows], trace.phase[rows], rows)
    policy.begin_step(ctx)
    ctx.set_layer(layer, experts[layer], tokens[layer], routing=trace.expert_ids[rows][:, layer],
                  lookahead={d: a[rows][:, layer] for d, a in trace.lookahead.items()})
    policy.on_layer(ctx)
    policy.prefetch(ctx)
    need = data.draw(st.integers(1, capacity))
    victims = list(policy.evict(cache, need, layer))
    assert len(victims) <= need and len(set(victims)) == len(victims)
    for key in victims:
        assert type(key) is int and key in cache.resident
        assert key not in cache.in_flight and key not in ctx.keys
        if cache.partition_slots is not None:
            assert key // n_experts == layer
    evictable = [k for k in cache.resident if k not in ctx.keys
                 and (cache.partition_slots is None or k // n_experts == layer)]
    assert len(victims) == min(need, len(evictable))


def test_freq_distance_prefers_frequent_and_near() -> None:
    policy = build_policy({"name": "f", "replacement": {"name": "freq-distance",
                                                        "distance_weight": 1.0}})
    trace = sequence_trace([[0]], num_experts=4, num_layers=4)
    policy.reset(trace.spec, 4, CostModel.for_spec(trace.spec), trace)
    cache = SlotCache(4, 4, 4)
    for key in (1, 5, 9, 13):  # expert 1 of every layer
        cache.insert(key)
        policy.on_fetch_done(key)
    ctx = LayerContext(trace.spec, cache)
    ctx.begin_step(0, np.zeros(1, np.int32), np.ones(1, np.int8))
    policy.begin_step(ctx)
    ctx.set_layer(0, [0], [1])
    policy.on_layer(ctx)
    # equal counts: the layer furthest ahead (layer 0 itself, next used in the next step) goes
    # first, then layer 3, layer 2; layer 1 runs next and stays longest
    assert list(policy.evict(cache, 4, 0)) == [1, 13, 9, 5]


def test_min_count_admission_streams_one_off_experts() -> None:
    trace = sequence_trace([0, 1, 2, 3, 0, 1, 0, 1])
    policy = build_policy({"name": "a", "admission": {"name": "min-count", "min_count": 2}})
    stats = evaluate(trace, policy, 2).cache
    assert stats.streamed == 4  # first sight of 0, 1, 2, 3
    assert stats.hits == 2  # the last 0 and 1 (admitted on their second access)


def test_belady_bypass_declines_far_future_experts() -> None:
    trace = sequence_trace([0, 1, 2, 0, 1, 0, 1])
    stats = evaluate(trace, build_policy({"name": "b", "replacement": {"name": "belady"}}),
                     2).cache
    assert stats.streamed == 1 and stats.hits == 4
