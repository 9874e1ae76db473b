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
