"""Measured tables in a hardware profile replace the roofline (sim/measured.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.sim.compute import ComputeModel
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.measured import Curve, Measured
from moe_offload_lab.traces.errors import ConfigError
from sim_testing import HW, cyclic_trace, spec

MODEL = spec(num_layers=4, num_experts=8, top_k=2)
TABLES = {
    "model": MODEL.name,
    "h2d_copy": {"bytes": [1e6, 1e7, 1e8], "seconds": [1e-5 + 1e6 / 2e10, 1e-5 + 1e7 / 2e10,
                                                      1e-5 + 1e8 / 2e10]},
    "gpu_expert": {"tokens": [1, 4, 16], "seconds": [1e-4, 1.3e-4, 2.5e-4]},
    "layer_other": {"tokens": [1, 8], "seconds": [5e-5, 9e-5]},
}


def test_curve_interpolates_and_extends_linearly() -> None:
    curve = Curve((1.0, 4.0, 16.0), (1.0, 4.0, 10.0))
    assert curve(1) == 1.0 and curve(2.5) == 2.5 and curve(10) == 7.0
    assert curve(32) == 18.0  # the last segment's slope, 0.5 per token
    assert curve(0) == 0.0  # the first segment's slope, clipped at zero
    assert Curve((5.0,), (3.0,))(100) == 3.0


def test_tables_replace_the_roofline_for_their_model() -> None:
    hw = dataclasses.replace(HW, measured=TABLES)
    compute = ComputeModel(MODEL, hw)
    assert compute.measured_used == ["gpu_expert", "h2d_copy", "layer_other"]
    assert math.isclose(compute.link_latency_s, 1e-5, rel_tol=1e-6)
    assert math.isclose(compute.link_bytes_per_s, 2e10, rel_tol=1e-6)
    assert compute.gpu_expert_s(4) == 1.3e-4 and compute.layer_other_s(8) == 9e-5
    assert compute.cpu_expert_s(1) == ComputeModel(MODEL, HW).cpu_expert_s(1)  # not measured
    other = dataclasses.replace(MODEL, name="another-model")
    assert ComputeModel(other, hw).measured_used == ["h2d_copy"]  # copies apply to any model
    cost = compute.cost_model()
    assert math.isclose(cost.gpu_expert_fixed_s + cost.gpu_expert_s_per_token, 1e-4)


def test_all_resident_run_sums_the_measured_times() -> None:
    hw = dataclasses.replace(HW, measured=TABLES)
    trace = cyclic_trace(MODEL, tokens=10, period=3)
    policy = build_policy("lru")
    result = Engine(MODEL, trace, policy, hw, MODEL.num_expert_keys, preload=True).run()
    per_layer = (1e-4 * MODEL.top_k + 5e-5 + policy.decision_cost.seconds(1))
    assert math.isclose(result.makespan_s, 10 * MODEL.num_moe_layers * per_layer, rel_tol=1e-9)


@pytest.mark.parametrize("measured,message", [
    ({"gpu_expert": {"tokens": [1, 2]}}, "must be"),
    ({"gpu_expert": {"tokens": [2, 1], "seconds": [1, 2]}}, "strictly increasing"),
    ({"gpu_expert": {"tokens": [1, 2], "seconds": [1]}}, "equal-length"),
    ({"gpu_expert": {"tokens": [1, 2], "seconds": [1, float("nan")]}}, "finite"),
    ({"attention": {}}, "unknown measured"),
])
def test_bad_tables(measured: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Measured.parse(measured, "hardware 'x'")
    assert message in str(info.value)
