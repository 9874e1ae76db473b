"""The compute model (sim/compute.py): what non-expert work costs, and the runtime's costs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.sim.compute import ComputeModel, kv_bytes_per_token
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.hardware import load_hardware
from moe_offload_lab.sim.metrics import step_frame
from moe_offload_lab.sim.system import SystemProfile, load_system
from moe_offload_lab.traces.catalog import load_model
from moe_offload_lab.traces.format import DECODE, Trace

MIXTRAL = load_model("mixtral-8x7b")
A100, T4 = load_hardware("a100-80gb-sxm"), load_hardware("t4-pcie3")


@pytest.mark.parametrize("tokens, context", [(1, 300), (512, 512 * 257), (64, 64 * 2000)])
def test_attention_time_does_not_depend_on_the_experts_precision(tokens: int,
                                                                  context: int) -> None:
    times = [ComputeModel(MIXTRAL.with_overrides(expert_bytes_per_param=bpp), A100)
             .layer_other_s(tokens, context) for bpp in (2.0, 0.5, 0.325)]
    assert times[0] == times[1] == times[2]


def test_non_expert_weights_have_their_own_precision() -> None:
    four_bit = MIXTRAL.with_overrides(expert_bytes_per_param=0.325,
                                      non_expert_bytes_per_param=0.5)
    assert four_bit.non_expert_params == MIXTRAL.non_expert_bytes // 2
    assert four_bit.resident_non_expert_bytes == pytest.approx(MIXTRAL.non_expert_bytes / 4,
                                                               rel=1e-6)
    assert MIXTRAL.resident_non_expert_bytes == MIXTRAL.non_expert_bytes  # 0: as stated
    # decode reads a quarter of the weight bytes: memory-bound, so faster
    assert ComputeModel(four_bit, T4).layer_other_s(1, 100) < \
        ComputeModel(MIXTRAL, T4).layer_other_s(1, 100)
    # prefill FLOPs count parameters, not bytes: the same compute-bound time
    big = 4096 * 4096
    assert ComputeModel(four_bit, A100).layer_other_s(4096, big) == pytest.approx(
        ComputeModel(MIXTRAL, A100).layer_other_s(4096, big), rel=0.02)


def test_decode_attention_reads_the_kv_cache() -> None:
    compute = ComputeModel(MIXTRAL, T4)
    per_token = kv_bytes_per_token(MIXTRAL)
    assert per_token == 2 * 8 * 128 * 2  # keys and values of 8 KV heads of 128, bf16
    short, long = compute.layer_other_s(1, 100), compute.layer_other_s(1, 32_000)
    extra = (32_000 - 100) * per_token * MIXTRAL.num_layers / MIXTRAL.num_moe_layers
    assert long - short == pytest.approx(extra / T4.hbm_bytes_per_s, rel=1e-9)
    mla = load_model("deepseek-v3")
    assert kv_bytes_per_token(mla) == (512 + 64) * 2  # MLA caches its compressed latent


def _growing_context_trace(tokens: int, start: int) -> Trace:
    spec = MIXTRAL.with_overrides(expert_bytes_per_param=0.5)
    n_layers, k = spec.num_moe_layers, spec.top_k
    ids = np.tile(np.arange(k, dtype=np.int16), (tokens, n_layers, 1))  # [T, L, k] always 0, 1
    return Trace(spec=spec, request_id=np.zeros(tokens, np.int32),
                 position=np.arange(start, start + tokens, dtype=np.int32),
                 phase=np.full(tokens, DECODE, np.int8), expert_ids=ids,
                 gate_weights=np.full((tokens, n_layers, k), 0.5, np.float32))


def test_a_decode_step_takes_longer_as_the_context_grows() -> None:
    trace = _growing_context_trace(40, 8000)
    engine = Engine(trace.spec, trace, build_policy("lru"), T4, trace.spec.num_expert_keys,
                    preload=True)
    latency = step_frame(engine.run().events)["latency_s"].to_numpy()  # [40]
    assert (np.diff(latency) > 0).all()  # every expert resident: only attention changes
    grown = ComputeModel(trace.spec, T4).layer_other_s(1, 8040) \
        - ComputeModel(trace.spec, T4).layer_other_s(1, 8001)
    assert latency[-1] - latency[0] == pytest.approx(grown * trace.spec.num_moe_layers,
                                                     rel=1e-6)


def test_gpu_bound_costs_scale_with_the_gpu_host_costs_do_not() -> None:
    system = load_system("mixtral-offloading")
    quantized = MIXTRAL.with_overrides(expert_bytes_per_param=0.325)
    on_a100, on_t4 = ComputeModel(quantized, A100, system), ComputeModel(quantized, T4, system)
    assert on_t4.gpu_scale == pytest.approx(A100.hbm_gb_per_s / T4.hbm_gb_per_s)
    dequant_a100 = on_a100._dequant_s(quantized.expert_params, 0.325)
    assert dequant_a100 > 0
    assert on_t4._dequant_s(quantized.expert_params, 0.325) == pytest.approx(
        dequant_a100 * A100.hbm_gb_per_s / T4.hbm_gb_per_s)
    assert on_a100._dequant_s(quantized.expert_params, 2.0) == 0  # bf16: nothing to dequantize
    host_only = system.with_overrides(layer_overhead_s=0.0, dequant_gb_per_s=0.0,
                                      kernels_per_layer=0, kernels_per_expert=0)
    for hw in (A100, T4):
        compute = ComputeModel(quantized, hw, host_only.with_overrides(host_layer_s=0.05))
        assert compute.layer_other_s(1, 10) == 0.05  # host-bound: the same on any GPU


def test_the_ideal_runtime_is_the_roofline_profile() -> None:
    assert load_system("roofline") == SystemProfile.ideal().with_overrides(name="roofline",
        description=load_system("roofline").description,
        provenance=load_system("roofline").provenance)
    ideal = ComputeModel(MIXTRAL, A100)
    assert ideal.system.name == "ideal"
    assert ideal.gpu_expert_s(1) == pytest.approx(
        A100.kernel_launch_s + max(MIXTRAL.expert_flops(1) / A100.gpu_flops_per_s,
                                   MIXTRAL.expert_bytes / A100.hbm_bytes_per_s))


def test_pageable_memory_slows_the_link() -> None:
    pageable = load_system("hf-accelerate")
    assert not pageable.pinned_memory and not pageable.overlaps
    compute = ComputeModel(MIXTRAL, A100, pageable)
    assert math.isclose(compute.link_bytes_per_s,
                        A100.link_bytes_per_s * pageable.pageable_link_fraction)
