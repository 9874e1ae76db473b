"""Host DRAM over NVMe (sim/host.py): which copies read from NVMe, and their closed-form time."""

from __future__ import annotations

import dataclasses
import math

from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.sim.compute import ComputeModel
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.host import HostTier
from moe_offload_lab.sim.metrics import summarize
from sim_testing import HW, check_log, cyclic_trace, spec


def test_lru_order_and_counts() -> None:
    tier = HostTier(2, 10, link_bytes_per_s=20.0, nvme_bytes_per_s=5.0)
    assert 0 in tier and 1 in tier and 2 not in tier  # the first keys start in DRAM
    assert tier.source_bytes_per_s(0) == 20.0  # 0 becomes most recent
    assert tier.source_bytes_per_s(5) == 5.0 and tier.nvme_reads == 1  # evicts 1
    assert 1 not in tier and 0 in tier and 5 in tier
    assert tier.source_bytes_per_s(5) == 20.0 and tier.nvme_reads == 1
    assert HostTier(4, 10, 20.0, 50.0).nvme_bytes_per_s == 20.0  # never faster than the link
    empty = HostTier(0, 10, 20.0, 5.0)
    assert empty.source_bytes_per_s(3) == 5.0 and empty.source_bytes_per_s(3) == 5.0


def test_on_demand_from_nvme_matches_closed_form() -> None:
    model = spec(num_layers=4, num_experts=8, top_k=2)
    trace = cyclic_trace(model, tokens=12, period=4)
    hw = dataclasses.replace(HW, nvme_gb_per_s=5.0)
    policy = build_policy("lru")
    host = HostTier(0, model.num_expert_keys, hw.link_bytes_per_s, 5e9)  # nothing in DRAM
    result = Engine(model, trace, policy, hw, 8, check=True, host=host).run()
    compute = ComputeModel(model, hw)
    k, n_layers = model.top_k, model.num_moe_layers
    copy_s = hw.copy_latency_s + model.expert_bytes / 5e9
    per_layer = (compute.layer_other_s(1) + policy.decision_cost.seconds(1) + k * copy_s
                 + k * compute.gpu_expert_s(1))
    assert math.isclose(result.makespan_s, 12 * n_layers * per_layer, rel_tol=1e-9)
    assert host.nvme_reads == 12 * n_layers * k
    check_log(result.events, model.expert_bytes)


def test_a_tier_holding_everything_changes_nothing() -> None:
    model = spec()
    trace = cyclic_trace(model, tokens=20, period=3)
    plain = Engine(model, trace, build_policy("gate-lookahead"), HW, 8).run()
    host = HostTier(model.num_expert_keys, model.num_expert_keys, HW.link_bytes_per_s, 1e9)
    tiered = Engine(model, trace, build_policy("gate-lookahead"), HW, 8, host=host).run()
    assert tiered.makespan_s == plain.makespan_s and host.nvme_reads == 0
    assert summarize(tiered.events) == summarize(plain.events)


def test_smaller_dram_never_speeds_up_on_demand() -> None:
    model = spec(num_layers=4, num_experts=8, top_k=2)
    trace = cyclic_trace(model, tokens=40, period=4)
    times = []
    for dram in (32, 24, 16, 8, 0):
        host = HostTier(dram, model.num_expert_keys, HW.link_bytes_per_s, 3e9)
        times.append(Engine(model, trace, build_policy("lru"), HW, 8, host=host).run().makespan_s)
    assert all(a <= b + 1e-12 for a, b in zip(times, times[1:], strict=False))
    assert times[-1] > times[0]
