"""Prophet's confidence-guided cache: a hand-worked case of keeping, promoting and streaming by
confidence, its lower-tier decisions, and where it differs from LRU."""

from __future__ import annotations

import numpy as np
import pytest
from moe_offload_lab.policies import LayerContext, SlotCache, build_policy
from moe_offload_lab.policies.evaluation import evaluate
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.replacement.confidence import ConfidenceGuided
from moe_offload_lab.policies.toy_traces import toy_spec
from policy_testing import sequence_trace

# 4 MoE layers x 4 experts, top-1: key = 4 * layer + expert
SPEC = toy_spec(4, 4, 1)


def _state(capacity: int = 4, residents=(5, 9, 14, 1)):
    """The rule after: residents inserted in ``residents`` order (so LRU would evict them in
    that order), layer 0 run with expert 0, and a prediction made at layer 0 that gives expert 1
    of layer 1 (key 5) 0.9 and expert 2 of layer 2 (key 10) 0.6."""
    rule = ConfidenceGuided(ConfidenceGuided.Params(ages=2, prior=0.5))
    rule.reset(SPEC, capacity)
    prediction = Prediction(2, 4, 4)
    rule.bind_prediction(prediction)
    cache = SlotCache(capacity, 4, 4)
    for key in residents:
        cache.insert(key)
        rule.on_insert(key)
    ctx = LayerContext(SPEC, cache)
    ctx.begin_step(0, np.zeros(1, np.int32), np.ones(1, np.int8))
    ctx.set_layer(0, [0], [1], [0])
    rule.on_access(ctx)
    prediction.begin(0, 0)  # targets: layers 1 and 2
    prediction.ranked[0], prediction.confidence[0] = [1], [0.9]
    prediction.ranked[1], prediction.confidence[1] = [2], [0.6]
    return rule, cache, ctx


def test_hand_worked_densities() -> None:
    rule, _, _ = _state()
    # key 5: ranked at distance 1 with 0.9 -> 0.9 / 1
    assert rule.density(5) == pytest.approx(0.9)
    # key 9: layer 2 is covered but expert 1 unranked: the mass left, (1 expected expert - 0.6)
    # over the 3 unranked experts, at distance 2
    assert rule.need_probability(9) == pytest.approx(0.4 / 3)
    assert rule.density(9) == pytest.approx(0.4 / 3 / 2)
    # key 14: layer 3 is not covered, never used (age 1): prior/2 with no observation, distance 3
    assert rule.need_probability(14) == pytest.approx(0.25)
    assert rule.density(14) == pytest.approx(0.25 / 3)
    # key 1: layer 0 just ran (distance 4); it was resident and unused at that visit (1
    # observation, 0 uses): (0 + 0.25) / (1 + 1)
    assert rule.need_probability(1) == pytest.approx(0.125)
    assert rule.density(1) == pytest.approx(0.125 / 4)


def test_keeps_by_confidence_where_lru_would_evict_the_confident_expert() -> None:
    rule, cache, _ = _state()
    out: list[int] = []
    rule.victims(cache, 4, 0, (), (), out)
    # LRU order is 5, 9, 14, 1: it would drop key 5, the one predicted next with 0.9 first
    assert out == [1, 9, 14, 5]
    out.clear()
    rule.victims(cache, 2, 0, (1,), (9,), out)  # never the current layer's or wanted keys
    assert out == [14, 5]


def test_promotes_a_prefetch_only_over_a_less_dense_resident() -> None:
    rule, cache, _ = _state()
    out: list[int] = []
    # the plan brings key 10 (0.6 at distance 2 = 0.3): key 1 (0.031) makes room
    rule.victims(cache, 1, -1, (), {10}, out)
    assert out == [1]
    # two plan keys, 10 (0.3) and 11 (unranked: 0.4 / 3 / 2 = 0.067): key 1 (0.031) yields to
    # the first, but key 9 (0.067) is not less dense than 11, so the plan is cut to one key
    out.clear()
    rule.victims(cache, 2, -1, (), {10, 11}, out)
    assert out == [1]


def test_streams_a_demand_fetch_that_loses_to_every_resident() -> None:
    # residents 5 (0.9 / 1) and 10 (0.6 / 2); the missing key 0 of the layer that runs now
    # would next be used a whole step away: 0.5 / 4 = 0.125 < 0.3 -> streamed, not cached
    rule, cache, ctx = _state(capacity=2, residents=(5, 10))
    assert not rule.admit(0, ctx)
    # with the cheaper resident 9 (0.067) instead of 10 it is admitted
    rule, cache, ctx = _state(capacity=2, residents=(5, 9))
    assert rule.admit(0, ctx)
    # plain demand paging when admission by confidence is off
    rule = ConfidenceGuided(ConfidenceGuided.Params(admit_by_confidence=False))
    rule.reset(SPEC, 2)
    assert rule.admit(0, ctx)


def test_host_tier_keeps_and_promotes_by_the_same_densities() -> None:
    rule, _, _ = _state()
    out: list[int] = []
    rule.host_victims([5, 9, 14, 1], 2, protect=(), out=out)
    assert out == [1, 9]
    out.clear()
    rule.host_victims([5, 9, 14, 1], 2, protect=(1,), out=out)
    assert out == [9, 14]
    # promotions: 10 (0.3) into the one free slot; 11 (0.067) only in place of a resident of
    # lower density: key 1 (0.031) of the DRAM residents
    out.clear()
    rule.host_promotions([11, 10], [5, 1], free=1, out=out)
    assert out == [10, 11]
    out.clear()
    rule.host_promotions([11, 10], [5, 9], free=0, out=out)
    assert out == [10]  # 10 displaces 9 (0.067); 11 would need to beat 5 (0.9)


def _cyclic_policy(rule: str) -> object:
    return build_policy({"name": rule, "horizon": 1, "replacement": {"name": rule}})


def test_beats_lru_where_lru_thrashes() -> None:
    # every token uses experts 0 and 1 at each of 4 layers: 8 keys in a loop through 6 slots.
    # LRU always evicts the key needed next (0 hits); keeping by hit density keeps most.
    trace = sequence_trace([[0, 1]] * 40, num_experts=4, top_k=2, num_layers=4)
    lru = evaluate(trace, _cyclic_policy("lru"), 6).cache
    conf = evaluate(trace, _cyclic_policy("confidence"), 6).cache
    assert lru.hits == 0
    assert conf.hit_ratio > 0.6
    belady = evaluate(trace, _cyclic_policy("belady"), 6).cache
    assert conf.hit_ratio <= belady.hit_ratio
