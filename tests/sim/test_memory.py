"""Sizing the GPU expert cache (sim/memory.py): slots, fraction, budget, no cache, fit."""

from __future__ import annotations

import pytest
from moe_offload_lab.sim.hardware import load_hardware
from moe_offload_lab.sim.memory import GpuMemory
from moe_offload_lab.traces.catalog import load_model
from moe_offload_lab.traces.errors import ConfigError

MIXTRAL = load_model("mixtral-8x7b")
H100 = load_hardware("h100-sxm")


def test_precedence_slots_then_budget_then_fraction() -> None:
    assert GpuMemory.plan({"slots": 10, "gpu_memory_gb": 40}, MIXTRAL, H100).slots == 10
    budget = GpuMemory.plan({"gpu_memory_gb": 40, "fraction": 0.9}, MIXTRAL, H100)
    expected = int((40e9 - MIXTRAL.non_expert_bytes) // MIXTRAL.expert_bytes)
    assert budget.slots == expected and budget.needed_bytes <= 40e9
    assert budget.needed_bytes + MIXTRAL.expert_bytes > 40e9  # whole experts, none left over
    assert GpuMemory.plan({"fraction": 0.25}, MIXTRAL, H100).slots == 64


def test_resident_weights_are_charged() -> None:
    plan = GpuMemory.plan({"slots": 4}, MIXTRAL, H100)
    assert plan.resident_bytes == MIXTRAL.non_expert_bytes
    assert plan.needed_bytes == MIXTRAL.non_expert_bytes + 4 * MIXTRAL.expert_bytes
    assert plan.fits and plan.summary()["fits_gpu_memory"]
    qwen2 = load_model("qwen2-57b-a14b")  # one shared expert per layer stays resident
    shared = GpuMemory.plan({"slots": 8}, qwen2, H100)
    assert shared.resident_bytes == (qwen2.non_expert_bytes
                                     + qwen2.num_moe_layers * qwen2.shared_expert_bytes)


def test_no_cache_holds_one_layer() -> None:
    plan = GpuMemory.plan({"slots": 0}, MIXTRAL, H100)
    assert plan.slots is None
    assert plan.resolve(MIXTRAL, 1).slots == 2  # decode, batch 1: top-2
    assert plan.resolve(MIXTRAL, 3).slots == 6
    assert plan.resolve(MIXTRAL, 500).slots == 8  # a prefill step touches every expert


@pytest.mark.parametrize("cache,message", [
    ({"slots": 1}, "smaller than one layer's top-k"),
    ({"slots": 257}, "exceeds"),
    ({"slots": -1}, ">= 0"),
    ({"gpu_memory_gb": 0}, "positive"),
    ({"gpu_memory_gb": 3.5}, "holds 0 experts"),
    ({"gpu_memory_gb": 500}, "exceeds h100-sxm"),
    ({"fraction": 1.5}, "(0, 1]"),
    ({"fraction": 1.0, "strict_memory": True}, "do not fit"),
    ({"wrong": 1}, "unknown cache key"),
])
def test_bad_cache_configs(cache: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        GpuMemory.plan(cache, MIXTRAL, H100)
    assert message in str(info.value)


def test_the_fit_check_counts_the_kv_cache() -> None:
    from moe_offload_lab.sim.compute import kv_bytes_per_token

    plan = GpuMemory.plan({"slots": 64}, MIXTRAL, H100)
    short = plan.resolve(MIXTRAL, 1, peak_context_tokens=1_000)
    assert short.fits
    assert short.kv_bytes == 1_000 * kv_bytes_per_token(MIXTRAL) * MIXTRAL.num_layers
    room = H100.gpu_mem_bytes - short.needed_bytes + short.kv_bytes  # bytes left for KV
    tokens = room // (kv_bytes_per_token(MIXTRAL) * MIXTRAL.num_layers) + 1
    long = plan.resolve(MIXTRAL, 1, peak_context_tokens=int(tokens))
    assert not long.fits and long.summary()["kv_cache_bytes"] == long.kv_bytes
    strict = GpuMemory.plan({"slots": 64, "strict_memory": True}, MIXTRAL, H100)
    with pytest.raises(ConfigError, match="of KV cache"):
        strict.resolve(MIXTRAL, 1, peak_context_tokens=int(tokens), hardware="h100-sxm")


def test_activations_and_the_runtime_reserve_are_counted() -> None:
    from moe_offload_lab.sim.system import load_system

    system = load_system("fused")
    plan = GpuMemory.plan({"slots": 8}, MIXTRAL, H100, system)
    assert plan.reserved_bytes == int(system.reserved_gpu_gib * 1024**3) > 0
    decode, prefill = plan.resolve(MIXTRAL, 1), plan.resolve(MIXTRAL, 4096)
    assert prefill.activation_bytes > 1000 * decode.activation_bytes > 0
    assert prefill.needed_bytes - decode.needed_bytes == \
        prefill.activation_bytes - decode.activation_bytes


def test_peak_context_of_a_schedule() -> None:
    import numpy as np
    from moe_offload_lab.sim.memory import peak_context

    request = np.array([0, 0, 0, 1, 1, 0, 1, 0])  # rows of two requests
    position = np.array([0, 1, 2, 0, 1, 3, 2, 4])
    # a prefill of both (3 + 2 tokens), then decode steps of both, then request 0 alone
    schedule = [np.array([0, 1, 2, 3, 4]), np.array([5, 6]), np.array([7])]
    assert peak_context(schedule, request, position) == 4 + 3  # step 1: contexts 4 and 3


def test_slots_per_layer() -> None:
    plan = GpuMemory.plan({"slots_per_layer": 4, "fraction": 0.9}, MIXTRAL, H100)
    assert plan.slots == 4 * MIXTRAL.num_moe_layers
    assert GpuMemory.plan({"slots": 0, "slots_per_layer": 4}, MIXTRAL, H100).slots is None
    for bad in (0, 9, 2.5):
        with pytest.raises(ConfigError, match="slots_per_layer"):
            GpuMemory.plan({"slots_per_layer": bad}, MIXTRAL, H100)


def test_non_expert_weights_are_charged_at_their_own_precision() -> None:
    four_bit = MIXTRAL.with_overrides(non_expert_bytes_per_param=0.5)
    plan = GpuMemory.plan({"slots": 4}, four_bit, H100)
    assert plan.resident_bytes == four_bit.resident_non_expert_bytes < MIXTRAL.non_expert_bytes
