"""PreScope's PreSched: the exact plan equals an exhaustive search, beats the greedy baseline
where its order is wrong, chooses CPU compute when the CPU is cheaper, and respects budgets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from moe_offload_lab.policies import CostModel, LayerContext, SlotCache
from moe_offload_lab.policies.planners.presched import (
    CPU,
    DEMAND,
    PREFETCH,
    Instance,
    Item,
    exhaustive_cost,
    plan_cost,
    solve,
)
from moe_offload_lab.policies.prediction import Prediction
from moe_offload_lab.policies.registry import PLANNERS
from moe_offload_lab.policies.toy_traces import toy_spec
from policy_testing import policy_settings
from test_planners import _check_plan, _setup

SPEC = toy_spec(6, 8, 2)


@st.composite
def instances(draw: st.DrawFn) -> Instance:
    horizon = draw(st.integers(1, 3))
    copy_s = draw(st.floats(0.1, 2.0))
    layer_s = draw(st.floats(0.05, 2.0))
    # the miss cost grows with confidence, as it does through the expected token count
    miss_fixed, miss_slope = draw(st.floats(0.0, 2.0)), draw(st.floats(0.0, 2.0))
    items = []
    for key in range(draw(st.integers(0, 6))):
        c = draw(st.floats(0.01, 1.0))
        miss = min(copy_s, miss_fixed + miss_slope * c)
        items.append(Item(key, draw(st.integers(1, horizon)), c, miss, miss < copy_s))
    return Instance(tuple(items), copy_s, draw(st.floats(0.0, 2.0)),
                    tuple(d * layer_s for d in range(1, horizon + 1)),
                    draw(st.floats(0.0, 1.0)) * copy_s, draw(st.integers(0, 6)))


@policy_settings
@given(inst=instances())
def test_plan_equals_exhaustive_search(inst: Instance) -> None:
    order = solve(inst)
    assert len(order) == len(set(order)) <= inst.max_keys
    assert plan_cost(inst, order) == pytest.approx(exhaustive_cost(inst), abs=1e-9)


def test_hand_worked_instance() -> None:
    # copy 1.5 s, layers 1 s: B (layer l+2, 0.95) alone arrives in time (finish 1.5 <= 2);
    # adding A (layer l+1, 0.5) anywhere costs more than it saves
    inst = Instance((Item(0, 1, 0.5, 1.5), Item(1, 2, 0.95, 1.5)), 1.5, 0.0, (1.0, 2.0),
                    0.3, 4)
    assert solve(inst) == [1]
    assert plan_cost(inst, [1]) == pytest.approx(0.5 * 1.5 + 0.05 * 0.3)
    assert plan_cost(inst, [0, 1]) == pytest.approx(
        0.5 * 0.5 + 0.5 * 0.3 + 0.95 * 1.0 + 0.05 * 0.3)


def _frame(planner_name: str, confidence_a: float = 0.5,
           **params) -> tuple[object, LayerContext, Prediction]:
    # copy 1.5 ms, one layer 1 ms (no expert time), nothing on the link
    cost = CostModel(link_bytes_per_s=SPEC.expert_bytes / 1.5e-3, copy_latency_s=0.0,
                     expert_bytes=SPEC.expert_bytes, gpu_expert_s_per_token=0.0,
                     gpu_expert_fixed_s=0.0, cpu_expert_s_per_token=1e-3,
                     cpu_expert_fixed_s=0.0, layer_other_s=1e-3)
    planner = PLANNERS.build({"name": planner_name, "min_confidence": 0.0, **params})
    planner.reset(SPEC, 16, cost, 2)
    cache = SlotCache(16, 8, 6)
    for key in (0, 1):  # the current layer's experts are resident: no CPU work now
        cache.insert(key)
    ctx = LayerContext(SPEC, cache)
    ctx.begin_step(0, np.zeros(1, np.int32), np.ones(1, np.int8))
    ctx.set_layer(0, [0, 1], [1, 1])
    prediction = Prediction(2, 6, 8)
    prediction.begin(0, 0)
    prediction.ranked[0], prediction.confidence[0] = [2], [confidence_a]  # A: layer 1, key 10
    prediction.ranked[1], prediction.confidence[1] = [5], [0.95]  # B: layer 2, key 21
    return planner, ctx, prediction


def test_beats_the_greedy_baseline_where_earliest_deadline_first_is_wrong() -> None:
    # greedy takes B (most confident) then A (0.35 * (1.5 - 0.5) > 0.65 * 0.3), and issues them
    # earliest deadline first: A's copy makes B late (B's layer starts after 2 ms of GPU work
    # plus A's expected miss, 0.35 * 1.5 ms = 2.525 ms; B lands at 3 ms). B alone is worth more.
    greedy, ctx, prediction = _frame("cost-aware", 0.35, waste_weight=0.2, consider_cpu=False)
    greedy_keys = list(greedy.plan(ctx, prediction).keys)
    assert greedy_keys == [8 + 2, 16 + 5]
    exact, ctx, prediction = _frame("presched", 0.35, waste_weight=0.2, consider_cpu=False)
    exact_keys = list(exact.plan(ctx, prediction).keys)
    assert exact_keys == [16 + 5]
    inst = exact.instance
    index = {item.key: i for i, item in enumerate(inst.items)}
    greedy_cost = plan_cost(inst, [index[k] for k in greedy_keys])
    exact_cost = plan_cost(inst, [index[k] for k in exact_keys])
    assert exact_cost < greedy_cost - 1e-4  # in seconds of expected stall
    assert exact.fates == {8 + 2: DEMAND, 16 + 5: PREFETCH}


def test_chooses_the_cpu_when_it_is_cheaper_than_a_copy() -> None:
    # one token: the CPU takes 1 ms more than the GPU, a copy 1.5 ms -> A is computed on the
    # CPU (at 0.5 it can never repay a copy's waste: 0.5 * 1.5 >= 0.5 * 1.5)
    planner, ctx, prediction = _frame("presched", waste_weight=1.0)
    keys = list(planner.plan(ctx, prediction).keys)
    assert planner.fates[8 + 2] == CPU
    assert 8 + 2 not in keys and keys == [16 + 5]
    # without the CPU option, the same A is a demand load
    planner, ctx, prediction = _frame("presched", waste_weight=1.0, consider_cpu=False)
    planner.plan(ctx, prediction)
    assert planner.fates[8 + 2] == DEMAND


@policy_settings
@given(data=st.data(), horizon=st.integers(1, 3), budget_fraction=st.none() | st.floats(0, 8),
       link_gbps=st.floats(0.01, 1000.0))
def test_respects_budget_and_plans_only_absent_keys(data: st.DataObject, horizon: int,
                                                    budget_fraction: float | None,
                                                    link_gbps: float) -> None:
    capacity, cache, ctx, prediction = _setup(data, horizon)
    budget_bytes = None if budget_fraction is None else budget_fraction * SPEC.expert_bytes
    planner = PLANNERS.build({"name": "presched", "budget_bytes": budget_bytes})
    planner.reset(SPEC, capacity, CostModel.for_spec(SPEC, link_bytes_per_s=link_gbps * 1e9),
                  horizon)
    plan = planner.plan(ctx, prediction)
    _check_plan(plan, cache, planner.wanted)
    if budget_bytes is not None:
        assert len(plan.keys) * SPEC.expert_bytes <= budget_bytes
    assert len(plan.keys) <= max(capacity - len(ctx.keys), 0)
    assert {item.key for item in planner.instance.items} <= set(planner.fates)
    assert all(planner.fates[k] == "prefetch" for k in plan.keys)
