"""Prefetch planners: budgets, ordering, cancellation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from moe_offload_lab.policies import CostModel, LayerContext, SlotCache
from moe_offload_lab.policies.keys import is_valid_key
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.registry import PLANNERS
from moe_offload_lab.policies.toy_traces import toy_spec
from policy_testing import policy_settings

SPEC = toy_spec(6, 8, 2)


def _setup(data: st.DataObject, horizon: int):
    n_layers, n_experts = SPEC.num_moe_layers, SPEC.num_experts
    capacity = data.draw(st.integers(2, n_layers * n_experts))
    cache = SlotCache(capacity, n_experts, n_layers)
    present = data.draw(st.lists(st.integers(0, n_layers * n_experts - 1), unique=True,
                                 max_size=capacity))
    for i, key in enumerate(present):
        (cache.start_fetch if i % 3 == 0 else cache.insert)(key)
    layer = data.draw(st.integers(0, n_layers - 1))
    ctx = LayerContext(SPEC, cache)
    ctx.begin_step(0, np.zeros(2, np.int32), np.ones(2, np.int8))
    experts = sorted(data.draw(st.lists(st.integers(0, n_experts - 1), min_size=1, max_size=3,
                                        unique=True)))
    ctx.set_layer(layer, experts, [1] * len(experts))
    prediction = Prediction(horizon, n_layers, n_experts)
    prediction.begin(0, layer)
    for i in range(horizon):
        ranked = data.draw(st.lists(st.integers(0, n_experts - 1), unique=True))
        conf = sorted(data.draw(st.lists(st.floats(0.01, 1.0), min_size=len(ranked),
                                         max_size=len(ranked))), reverse=True)
        prediction.ranked[i], prediction.confidence[i] = ranked, conf
    return capacity, cache, ctx, prediction


def _check_plan(plan, cache: SlotCache, wanted: set[int]) -> None:
    assert len(set(plan.keys)) == len(plan.keys)
    for key in plan.keys:
        assert is_valid_key(key, SPEC.num_moe_layers, SPEC.num_experts)
        assert key not in cache.resident and key not in cache.in_flight
        assert key in wanted
    for key in plan.cancel:
        assert key in cache.in_flight


@policy_settings
@given(data=st.data(), horizon=st.integers(1, 3),
       budget_experts=st.integers(0, 6), budget_fraction=st.none() | st.floats(0.0, 8.0))
def test_lookahead_respects_its_budgets(data: st.DataObject, horizon: int, budget_experts: int,
                                        budget_fraction: float | None) -> None:
    capacity, cache, ctx, prediction = _setup(data, horizon)
    budget_bytes = None if budget_fraction is None else budget_fraction * SPEC.expert_bytes
    threshold = data.draw(st.floats(0.0, 1.0))
    planner = PLANNERS.build({"name": "lookahead", "budget_bytes": budget_bytes,
                              "budget_experts": budget_experts, "min_confidence": threshold})
    planner.reset(SPEC, capacity, CostModel.for_spec(SPEC), horizon)
    plan = planner.plan(ctx, prediction)
    _check_plan(plan, cache, planner.wanted)
    if budget_bytes is not None:
        assert len(plan.keys) * SPEC.expert_bytes <= budget_bytes
    if budget_experts:
        assert len(plan.keys) <= budget_experts
    for key in plan.keys:  # only confident predictions
        i = next(i for i in range(horizon) if prediction.targets[i] == key // SPEC.num_experts)
        conf = prediction.confidence[i][list(prediction.ranked[i]).index(key % SPEC.num_experts)]
        assert conf >= threshold


@policy_settings
@given(data=st.data(), horizon=st.integers(1, 3), budget_fraction=st.none() | st.floats(0, 8),
       link_gbps=st.floats(0.01, 1000.0))
def test_cost_aware_respects_its_budget(data: st.DataObject, horizon: int,
                                        budget_fraction: float | None, link_gbps: float) -> None:
    capacity, cache, ctx, prediction = _setup(data, horizon)
    budget_bytes = None if budget_fraction is None else budget_fraction * SPEC.expert_bytes
    planner = PLANNERS.build({"name": "cost-aware", "budget_bytes": budget_bytes})
    cost = CostModel.for_spec(SPEC, link_bytes_per_s=link_gbps * 1e9)
    planner.reset(SPEC, capacity, cost, horizon)
    plan = planner.plan(ctx, prediction)
    _check_plan(plan, cache, planner.wanted)
    if budget_bytes is not None:
        assert len(plan.keys) * SPEC.expert_bytes <= budget_bytes
    # earliest deadline first: target distances never decrease along the plan
    distances = [(key // SPEC.num_experts - ctx.layer - 1) % SPEC.num_moe_layers
                 for key in plan.keys]
    assert distances == sorted(distances)


@policy_settings
@given(data=st.data(), n=st.integers(0, 5))
def test_next_layer_takes_the_top_n(data: st.DataObject, n: int) -> None:
    capacity, cache, ctx, prediction = _setup(data, 2)
    planner = PLANNERS.build({"name": "next-layer", "n": n})
    planner.reset(SPEC, capacity, CostModel.for_spec(SPEC), 2)
    plan = planner.plan(ctx, prediction)
    _check_plan(plan, cache, planner.wanted)
    top = (n or SPEC.top_k)
    base = prediction.targets[0] * SPEC.num_experts
    expected = [base + e for e in prediction.ranked[0][:min(top, capacity)]]
    assert plan.keys == [k for k in expected if k not in cache.resident
                         and k not in cache.in_flight]
    assert len(plan.keys) * SPEC.expert_bytes <= top * SPEC.expert_bytes


def test_on_demand_plans_nothing() -> None:
    planner = PLANNERS.build({"name": "on-demand"})
    planner.reset(SPEC, 4, CostModel.for_spec(SPEC), 1)
    assert planner.plan(LayerContext(SPEC, SlotCache(4, 8, 6)), None).keys == []


@pytest.mark.parametrize("name", ["next-layer", "lookahead", "cost-aware", "presched"])
def test_stale_copies_are_cancelled(name: str) -> None:
    cache = SlotCache(8, 8, 6)
    for key in (2 * 8 + 1, 2 * 8 + 3, 3 * 8 + 5):  # layer 2 experts 1 and 3; layer 3 expert 5
        cache.start_fetch(key)
    ctx = LayerContext(SPEC, cache)
    ctx.begin_step(0, np.zeros(1, np.int32), np.ones(1, np.int8))
    ctx.set_layer(2, [3, 4], [1, 1])  # the real routing of layer 2 does not use expert 1
    planner = PLANNERS.build({"name": name, "cancel_stale": True})
    planner.reset(SPEC, 8, CostModel.for_spec(SPEC), 1)
    prediction = Prediction(1, 6, 8)
    prediction.begin(0, 2)
    plan = planner.plan(ctx, prediction)
    assert plan.cancel == [2 * 8 + 1]


def _cost_aware_plan(link_bytes_per_s: float) -> list[int]:
    cost = CostModel.for_spec(SPEC, link_bytes_per_s=link_bytes_per_s, layer_other_s=1e-4)
    planner = PLANNERS.build({"name": "cost-aware"})
    planner.reset(SPEC, 16, cost, 2)
    ctx = LayerContext(SPEC, SlotCache(16, 8, 6))
    ctx.begin_step(0, np.zeros(1, np.int32), np.ones(1, np.int8))
    ctx.set_layer(0, [0, 1], [1, 1])
    prediction = Prediction(2, 6, 8)
    prediction.begin(0, 0)
    prediction.ranked[0], prediction.confidence[0] = [2, 3, 4], [0.95, 0.6, 0.3]
    prediction.ranked[1], prediction.confidence[1] = [5], [0.99]
    return list(planner.plan(ctx, prediction).keys)


def test_cost_aware_weighs_confidence_against_link_time() -> None:
    # ~55 us per copy, ~100 us per layer: the two confident ones and the 0.6 one (a little late
    # but still worth it) are fetched, earliest deadline first; 0.3 would waste more than it saves
    assert _cost_aware_plan(1e9) == [8 + 2, 8 + 3, 16 + 5]


def test_cost_aware_skips_copies_that_cannot_help() -> None:
    # ~50 ms per copy: none arrives before its layer, and a late copy saves almost nothing
    assert _cost_aware_plan(1e6) == []
