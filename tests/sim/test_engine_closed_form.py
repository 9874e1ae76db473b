"""Closed-form timings and monotonicity of the engine."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.policies.needs import step_experts
from moe_offload_lab.policies.toy_traces import make_trace
from moe_offload_lab.sim.compute import ComputeModel
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.metrics import summarize
from moe_offload_lab.sim.workload import static_batches
from moe_offload_lab.traces.errors import ConfigError
from sim_testing import HW, check_log, cyclic_trace, spec


def test_on_demand_without_reuse_matches_closed_form() -> None:
    model = spec(num_layers=4, num_experts=8, top_k=2)
    trace = cyclic_trace(model, tokens=12, period=4)
    policy = build_policy("lru")
    # capacity = one token's experts: LRU always evicts the previous token's, never reused
    result = Engine(model, trace, policy, HW, 8, batch=1, check=True).run()
    compute = ComputeModel(model, HW)
    k, n_layers = model.top_k, model.num_moe_layers
    per_layer = (compute.layer_other_s(1) + policy.decision_cost.seconds(1)
                 + k * compute.copy_s(model.expert_bytes) + k * compute.gpu_expert_s(1))
    expected = 12 * n_layers * per_layer
    assert math.isclose(result.makespan_s, expected, rel_tol=1e-9)
    summary = summarize(result.events)
    assert summary["hit_rate"] == 0.0
    assert summary["h2d_bytes"] == 12 * n_layers * k * model.expert_bytes
    check_log(result.events, model.expert_bytes)


@pytest.mark.parametrize("batch", [1, 3])
def test_all_resident_takes_the_sum_of_compute_times(batch: int) -> None:
    model = spec(num_layers=3, num_experts=4, top_k=2)
    trace = make_trace(model, 30, requests=3, seed=5)
    policy = build_policy("lru")
    slots = model.num_expert_keys
    result = Engine(model, trace, policy, HW, slots, batch, preload=True, check=True).run()
    compute = ComputeModel(model, HW)
    expected = 0.0
    for rows in static_batches(trace, batch):
        _, tokens = step_experts(trace.expert_ids[rows], model.num_experts)
        for layer_tokens in tokens:
            expected += compute.layer_other_s(len(rows)) + policy.decision_cost.seconds(len(rows))
            expected += sum(compute.gpu_expert_s(t) for t in layer_tokens)
    assert math.isclose(result.makespan_s, expected, rel_tol=1e-9)
    summary = summarize(result.events)
    assert summary["h2d_bytes"] == 0 and summary["stall_s"] == 0.0 and summary["hit_rate"] == 1.0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), slots=st.integers(2, 32), batch=st.integers(1, 3),
       factor=st.floats(1.01, 8.0))
def test_more_bandwidth_never_slows_on_demand(seed: int, slots: int, batch: int,
                                              factor: float) -> None:
    model = spec(num_layers=4, num_experts=8, top_k=2)
    trace = make_trace(model, 30, requests=2, seed=seed)
    times = []
    for gbps in (HW.link_gb_per_s, HW.link_gb_per_s * factor):
        hardware = HW.with_overrides(link_gb_per_s=gbps)
        times.append(Engine(model, trace, build_policy("lru"), hardware, slots, batch).run()
                     .makespan_s)
    assert times[1] <= times[0] * (1 + 1e-12)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), top_k=st.integers(1, 2))
def test_lru_hit_rate_never_falls_as_the_cache_grows(seed: int, top_k: int) -> None:
    model = spec(num_layers=3, num_experts=8, top_k=top_k)
    trace = make_trace(model, 40, requests=2, seed=seed)
    rates = [summarize(Engine(model, trace, build_policy("lru"), HW, slots, 1).run().events)
             ["hit_rate"] for slots in range(top_k, model.num_expert_keys + 1)]
    assert all(b >= a - 1e-12 for a, b in zip(rates, rates[1:], strict=False))


def test_cpu_placement_runs_on_the_host_without_copies() -> None:
    model = spec(num_layers=3, num_experts=8, top_k=2)
    trace = cyclic_trace(model, tokens=6, period=3)
    policy = build_policy("fiddler")
    result = Engine(model, trace, policy, HW, 4, batch=1, check=True).run()
    events = result.events
    cpu = events[events["detail"] == "cpu"]
    assert len(cpu) == 6 * 3 * 2  # fiddler puts every miss on the CPU: a closed form holds
    compute = ComputeModel(model, HW)
    per_layer = (compute.layer_other_s(1) + policy.decision_cost.seconds(1)
                 + 2 * compute.cpu_expert_s(1))
    assert math.isclose(result.makespan_s, 6 * 3 * per_layer, rel_tol=1e-9)
    assert not (events["kind"] == "copy").any()
    assert (cpu["resource"] == "cpu").all()
    check_log(events, model.expert_bytes)


def test_engine_rejects_bad_capacities_and_traces() -> None:
    model = spec(num_layers=2, num_experts=4, top_k=2)
    trace = cyclic_trace(model, tokens=3, period=2)
    with pytest.raises(ConfigError, match="top-k"):
        Engine(model, trace, build_policy("lru"), HW, 1)
    with pytest.raises(ConfigError, match="exceeds"):
        Engine(model, trace, build_policy("lru"), HW, 9)
    with pytest.raises(ConfigError, match="does not match"):
        Engine(spec(num_layers=3, num_experts=4, top_k=2), trace, build_policy("lru"), HW, 4)
