"""Engine invariants over random small traces and many policies."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.policies.toy_traces import make_trace
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.metrics import summarize
from moe_offload_lab.traces.errors import ConfigError
from sim_testing import HW, check_log, spec

POLICIES = ["lru", "fifo", "lfu", "lru-per-layer", "gate-lookahead", "mixtral-offloading",
            "fiddler", "oracle-belady", "oracle-prefetch", "prophet", "lookahead-budgeted",
            "moe-infinity"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), layers=st.integers(2, 4), experts=st.sampled_from([4, 8]),
       top_k=st.integers(1, 2), tokens=st.integers(5, 40), requests=st.integers(1, 3),
       batch=st.integers(1, 3), fraction=st.floats(0.0, 1.0),
       policy=st.sampled_from(POLICIES))
def test_invariants(seed: int, layers: int, experts: int, top_k: int, tokens: int, requests: int,
                    batch: int, fraction: float, policy: str) -> None:
    model = spec(layers, experts, top_k)
    trace = make_trace(model, tokens, requests=requests, seed=seed, lookahead=(1, 2))
    slots = top_k + round(fraction * (layers * experts - top_k))
    engine = Engine(model, trace, build_policy(policy), HW, slots, batch, check=True)
    try:
        result = engine.run()
    except ConfigError:  # a policy that cannot work with this capacity (e.g. partitioned LRU)
        assume(False)
        return
    check_log(result.events, model.expert_bytes)
    summary = summarize(result.events)
    assert summary["tokens"] == tokens
    assert summary["makespan_s"] == result.makespan_s
    assert summary["h2d_bytes"] >= summary["copies"] * model.expert_bytes
    assert 0.0 <= summary["hit_rate"] <= 1.0
    assert len(engine.cache) <= slots


@pytest.mark.parametrize("name", ["lru", "gate-lookahead", "presched", "oracle-prefetch"])
def test_skipped_timeouts_change_nothing(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = spec()
    trace = make_trace(model, 150, requests=3, seed=4)
    fast = Engine(model, trace, build_policy(name), HW, 10, batch=2).run().events
    monkeypatch.setattr(Engine, "defer_timeouts", False)
    slow = Engine(model, trace, build_policy(name), HW, 10, batch=2).run().events
    assert len(fast) == len(slow)
    for col in fast.columns:
        if col in ("start_s", "end_s"):
            np.testing.assert_allclose(fast[col], slow[col], rtol=1e-12, atol=1e-12)
        else:
            assert (fast[col].to_numpy() == slow[col].to_numpy()).all(), col


def test_slow_decisions_never_make_negative_stalls() -> None:
    # a policy decision far longer than a copy: a prefetch issued at the previous layer lands
    # while the current layer's decision is still running, so there is nothing to stall for
    from moe_offload_lab.policies.config import load_policy_config

    model = spec()
    trace = make_trace(model, 30, seed=4)
    config = load_policy_config("gate-lookahead").to_dict()
    policy = build_policy({**config, "decision_cost": {"where": "cpu", "fixed_s": 0.05}})
    events = Engine(model, trace, policy, HW, 8, check=True).run().events
    check_log(events, model.expert_bytes)
    stalls = events[events["kind"] == "stall"]
    assert (stalls["end_s"] > stalls["start_s"]).all()
    decisions = events[events["kind"] == "policy"].set_index(["step", "layer"])["end_s"]
    experts = events[(events["kind"] == "compute") & (events["expert"] >= 0)]
    for row in experts.itertuples(index=False):  # experts start once the decision is made
        assert row.start_s >= decisions[(row.step, row.layer)] - 1e-12
