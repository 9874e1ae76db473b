"""HOBBIT in the simulator: low-precision copies move fewer bytes, take a slot, and are counted."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.policies.evaluation import evaluate
from moe_offload_lab.sim.cli import compose
from moe_offload_lab.sim.compute import ComputeModel
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.metrics import summarize
from moe_offload_lab.sim.run import RunConfig, simulate
from omegaconf import OmegaConf
from sim_testing import HW, spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policies" / "placement"))
from test_hobbit import skewed_trace  # noqa: E402


def _trace(tokens: int, period: int):  # noqa: ANN202 - a Trace on the simulator's toy shape
    base = skewed_trace(tokens, period, n_layers=4)
    return base.__class__(spec=spec(4, 8, 2), request_id=base.request_id,
                          position=base.position, phase=base.phase,
                          expert_ids=base.expert_ids, gate_weights=base.gate_weights)


def test_low_precision_misses_match_closed_form() -> None:
    """No reuse (capacity 8 slots, 16 keys per period): every layer copies one full expert (gate
    0.8) and one quarter-size copy (gate 0.2), back to back on the link, then runs both."""
    model = spec(num_layers=4, num_experts=8, top_k=2)
    trace = _trace(tokens=12, period=2)
    policy = build_policy("hobbit")
    engine = Engine(model, trace, policy, HW, 8, batch=1, check=True)
    result = engine.run()
    compute = ComputeModel(model, HW)
    low_bytes = round(model.expert_bytes * 0.25)
    per_layer = (compute.layer_other_s(1) + policy.decision_cost.seconds(1)
                 + compute.copy_s(model.expert_bytes) + compute.copy_s(low_bytes)
                 + 2 * compute.gpu_expert_s(1))
    assert math.isclose(result.makespan_s, 12 * 4 * per_layer, rel_tol=1e-9)
    summary = summarize(result.events)
    assert summary["h2d_bytes"] == 12 * 4 * (model.expert_bytes + low_bytes)
    assert engine.protocol.n_lowbit == 12 * 4
    copies = result.events[result.events["kind"].astype(str) == "copy"]
    assert sorted(set(copies["bytes"])) == [low_bytes, model.expert_bytes]
    # the same copy at full precision takes longer: the saving is the link time of 3/4 expert
    lru_policy = build_policy("lru")
    lru = Engine(model, trace, lru_policy, HW, 8, batch=1).run()
    saved = 12 * 4 * (compute.copy_s(model.expert_bytes) - compute.copy_s(low_bytes)
                      + lru_policy.decision_cost.seconds(1) - policy.decision_cost.seconds(1))
    assert math.isclose(lru.makespan_s - result.makespan_s, saved, rel_tol=1e-6)


def test_a_low_precision_copy_holds_a_slot_and_serves_later_accesses() -> None:
    model = spec(num_layers=4, num_experts=8, top_k=2)
    trace = _trace(tokens=6, period=1)  # the same two experts at every layer, every token
    engine = Engine(model, trace, build_policy("hobbit"), HW, 8, batch=1, check=True)
    result = engine.run()
    low = {layer * 8 + 1 for layer in range(4)}  # expert 1 (gate 0.2) of every layer
    assert engine.protocol.lowbit == low and low <= set(engine.cache.resident)
    assert len(engine.cache.resident) == 8  # full and low copies alike take one slot each
    assert engine.protocol.n_lowbit == 6 * 4  # every computation of expert 1 is low precision
    assert summarize(result.events)["h2d_bytes"] == 4 * (model.expert_bytes
                                                         + round(model.expert_bytes * 0.25))
    # the offline replay makes the same decisions and counts the same
    replay = evaluate(trace, build_policy("hobbit"), 8).cache
    assert replay.lowbit_computes == engine.protocol.n_lowbit


def test_evicting_a_low_precision_copy_forgets_it() -> None:
    """Capacity 2 at batch 1 (one layer's experts): every low copy is evicted before reuse."""
    model = spec(num_layers=4, num_experts=8, top_k=2)
    engine = Engine(model, _trace(tokens=5, period=1), build_policy("hobbit"), HW, 2,
                    check=True)
    engine.run()
    assert engine.protocol.lowbit <= set(engine.cache.resident)
    assert len(engine.protocol.lowbit) == 1 and engine.protocol.n_lowbit == 5 * 4


def test_run_summary_reports_the_count() -> None:
    base = OmegaConf.to_container(compose(["policy=hobbit", "trace.tokens=2000", "prefill=false",
                                           "model=mixtral-8x7b"]), resolve=True)
    summary = simulate(RunConfig.from_dict(dict(base))).summary
    assert summary["policy"] == "hobbit" and summary["lowbit_expert_computes"] > 0
    lru = simulate(RunConfig.from_dict({**base, "policy": {**base["policy"],
                                                           "placement": {"name": "gpu"}}})).summary
    assert lru["lowbit_expert_computes"] == 0
    assert summary["h2d_bytes"] < lru["h2d_bytes"]
