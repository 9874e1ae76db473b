"""Numerics: every shape-free policy's replay equals the all-resident run (fp32, CPU twin):
bitwise where the computation is order-identical by construction (every expert on the test's
thread), within HOST_THREAD_ATOL when experts ran on the executor's host threads."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from hw_testing import CAPACITY, HOST_THREAD_ATOL, single_thread_torch, tiny_spec, tiny_trace
from moe_offload_lab.hw.replay import run_replay
from moe_offload_lab.policies.config import load_policy_config, shape_free_policies

POLICIES = shape_free_policies()
PREFETCHING = [n for n in POLICIES if load_policy_config(n).planner["name"] != "on-demand"]


@pytest.fixture(autouse=True)
def _one_thread():  # noqa: ANN202
    yield from single_thread_torch()


@cache
def reference(batch: int) -> torch.Tensor:
    return run_replay(tiny_spec(), tiny_trace(), None, batch=batch, resident_all=True).hidden


def _assert_matches(result, want: torch.Tensor, name: str) -> None:  # noqa: ANN001
    """Bitwise, or within HOST_THREAD_ATOL when experts ran on host threads."""
    if result.stats["cpu_experts"]:
        torch.testing.assert_close(result.hidden, want, rtol=0.0, atol=HOST_THREAD_ATOL)
    else:
        assert torch.equal(result.hidden, want), name


def test_there_are_shape_free_policies_of_both_kinds() -> None:
    assert "lru" in POLICIES and "fiddler" in POLICIES and "belady" in POLICIES
    assert "lookahead-budgeted" in PREFETCHING and "oracle-prefetch" in PREFETCHING


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", POLICIES)
def test_replay_equals_all_resident_bitwise(name: str, batch: int) -> None:
    result = run_replay(tiny_spec(), tiny_trace(), name, capacity_slots=CAPACITY, batch=batch,
                        check=True)
    assert result.hidden.dtype == torch.float32
    _assert_matches(result, reference(batch), name)
    stats = result.stats
    assert stats["max_used_slots"] <= CAPACITY
    moved = stats["fetches"] + stats["streams"] + stats["prefetches"] + stats["cpu_experts"]
    assert moved > 0  # the cache is smaller than the model: something had to move or run on host


@pytest.mark.parametrize("name", PREFETCHING)
def test_in_flight_and_cancelled_copies_keep_numerics(name: str) -> None:
    """A twin link that finishes no queued copy while a layer computes: prefetches are still in
    flight at the next layer (waited for, or cancelled by the policy)."""
    result = run_replay(tiny_spec(), tiny_trace(), name, capacity_slots=CAPACITY,
                        twin_copies_per_layer=0, check=True)
    _assert_matches(result, reference(1), name)


def test_cancellation_happens_and_frees_slots() -> None:
    result = run_replay(tiny_spec(), tiny_trace(), "lookahead-budgeted", capacity_slots=CAPACITY,
                        twin_copies_per_layer=0, check=True)
    assert result.stats["cancelled"] > 0
    cancelled = result.events[result.events["detail"] == "cancelled"]
    assert (cancelled["bytes"] == 0).all()  # dropped from the twin's queue before they ran
    assert result.stats["max_used_slots"] <= CAPACITY
    assert (result.events["detail"] == "inflight").any()


def test_gate_weights_matter() -> None:
    """Guard against a vacuous equality: a different seed gives different hidden states."""
    other = run_replay(tiny_spec(), tiny_trace(), None, resident_all=True, seed=5).hidden
    assert not torch.equal(other, reference(1))
    assert torch.isfinite(reference(1)).all()


def test_dense_blocks_and_shared_experts() -> None:
    """A scaled-down DeepSeek-V2-Lite: a dense first block, shared experts, MLA heads as GQA."""
    from moe_offload_lab.policies.toy_traces import make_trace
    from moe_offload_lab.traces.catalog import load_model

    spec = load_model("deepseek-v2-lite").with_overrides(
        num_layers=3, num_experts=8, top_k=2, hidden_size=32, expert_intermediate_size=16,
        shared_intermediate_size=16, dense_intermediate_size=24, num_attention_heads=4,
        num_kv_heads=4, head_dim=8, expert_bytes_per_param=4.0)
    assert spec.num_moe_layers == 2 and spec.num_shared_experts > 0
    trace = make_trace(spec, 20, requests=2, seed=4)
    ref = run_replay(spec, trace, None, resident_all=True, batch=2)
    result = run_replay(spec, trace, "lru", capacity_slots=4, batch=2, check=True)
    assert torch.equal(result.hidden, ref.hidden)
    assert result.stats["evictions"] > 0
