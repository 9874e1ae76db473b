"""Every bundled policy honours the engine contract, with delayed copies and with instant ones.

Checked on random traces: returned keys are valid (layer, expert) keys, evictions never touch a
key the current layer needs nor one in flight, plans never name present keys, cancellations only
name in-flight keys; and policies are deterministic.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from moe_offload_lab.policies import load_policy
from moe_offload_lab.policies.config import shape_free_policies
from moe_offload_lab.policies.evaluation import evaluate
from policy_testing import delayed_replay, policy_settings, random_trace

# every bundled policy that runs on any shape (learned ones are checked on their own model in
# tests/policies/learned)
POLICIES = shape_free_policies()

shapes = st.tuples(
    st.integers(0, 2**31 - 1),  # seed
    st.integers(1, 40),  # tokens
    st.integers(1, 5),  # layers
    st.integers(2, 10),  # experts
    st.integers(1, 3),  # top-k (capped at experts)
    st.integers(1, 6),  # batch
)


def _case(shape: tuple[int, ...], data: st.DataObject):
    seed, tokens, n_layers, n_experts, top_k, batch = shape
    top_k = min(top_k, n_experts)
    trace = random_trace(seed, tokens, n_layers, n_experts, top_k, lookahead=(1, 2),
                         error=0.3, requests=3)
    low = top_k * n_layers  # enough for per-layer partitions
    capacity = data.draw(st.integers(low, max(low, n_layers * n_experts)))
    return trace, capacity, batch


@pytest.mark.parametrize("name", POLICIES)
@policy_settings
@given(shape=shapes, data=st.data())
def test_contract_with_delayed_copies(name: str, shape: tuple[int, ...],
                                      data: st.DataObject) -> None:
    trace, capacity, batch = _case(shape, data)
    counts = delayed_replay(load_policy(name), trace, capacity, batch=batch, seed=shape[0])
    assert counts["hits"] <= counts["accesses"]


@pytest.mark.parametrize("name", POLICIES)
@policy_settings
@given(shape=shapes, data=st.data())
def test_contract_and_determinism_with_instant_copies(name: str, shape: tuple[int, ...],
                                                     data: st.DataObject) -> None:
    trace, capacity, batch = _case(shape, data)
    first = evaluate(trace, load_policy(name), capacity, batch=batch).to_dict()
    again = evaluate(trace, load_policy(name), capacity, batch=batch).to_dict()
    assert first == again
    assert 0.0 <= first["cache"]["hit_ratio"] <= 1.0


@pytest.mark.parametrize("name", ["lru", "gate-lookahead", "presched", "moe-infinity"])
def test_reset_forgets_state(name: str) -> None:
    trace = random_trace(3, 60, 3, 8, 2, lookahead=(1, 2))
    policy = load_policy(name)
    first = evaluate(trace, policy, 8, batch=2).to_dict()
    second = evaluate(trace, policy, 8, batch=2).to_dict()  # same object, reset inside
    assert first == second
