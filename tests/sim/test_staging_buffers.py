"""Staging buffers (``SystemProfile.staging_buffers``): PreScope's AsyncIO double buffering.

With B buffers in rotation a prefetch for layer m may start only once layer m - B has run its
experts. The closed form: a next-layer oracle prefetch whose copies (T) are shorter than a
layer's experts (k * g) but longer than the gap between layers (other + decision):

- double buffering (B = 2, or unbounded B = 0): the copies of layer l + 1 run while layer l
  computes, so only the very first layer waits (T) and every layer takes C = other + decision +
  k * g;
- a single buffer (B = 1): they start when layer l's experts end, so every later layer stalls
  T - (other + decision).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from moe_offload_lab.policies.config import build_policy, load_policy_config
from moe_offload_lab.policies.toy_traces import make_trace
from moe_offload_lab.sim.compute import ComputeModel
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.system import SystemProfile
from moe_offload_lab.traces.errors import ConfigError
from sim_testing import HW, check_log, cyclic_trace, spec

FAST_LINK = dataclasses.replace(HW, link_gb_per_s=1000, copy_latency_s=0.0)


def _system(buffers: int, **changes: object) -> SystemProfile:
    return SystemProfile.ideal().with_overrides(staging_buffers=buffers, **changes)


@pytest.mark.parametrize("buffers", [0, 1, 2, 3])
def test_double_buffering_overlaps_the_next_layers_copies(buffers: int) -> None:
    model = spec(num_layers=4, num_experts=8, top_k=2)
    steps = 6
    trace = cyclic_trace(model, steps, period=4)  # no expert reused within 16 slots' reach
    policy = build_policy("oracle-prefetch")  # exact next-layer prefetch, wrap-around included
    result = Engine(model, trace, policy, FAST_LINK, 16, check=True,
                    system=_system(buffers)).run()
    compute = ComputeModel(model, FAST_LINK)
    copies_s = 2 * compute.copy_s(model.expert_bytes)  # T: one layer's two experts
    gap_s = compute.layer_other_s(1) + policy.decision_cost.seconds(1)
    layer_s = gap_s + 2 * compute.gpu_expert_s(1)  # C
    assert gap_s < copies_s < 2 * compute.gpu_expert_s(1)  # the regime of the closed form
    layers = steps * model.num_moe_layers
    overlapped = layers * layer_s + copies_s
    if buffers == 1:
        expected = overlapped + (layers - 1) * (copies_s - gap_s)
    else:
        expected = overlapped
    assert math.isclose(result.makespan_s, expected, rel_tol=1e-9)
    check_log(result.events, model.expert_bytes)


def test_two_buffers_hold_the_copies_two_layers_ahead() -> None:
    """Horizon 2: layer l + 2's prefetch waits for layer l's experts (its buffer), so it never
    starts before them; with unbounded buffers it starts at the decision."""
    model = spec(num_layers=4, num_experts=8, top_k=2)
    trace = cyclic_trace(model, 5, period=4)
    config = {**load_policy_config("oracle-prefetch").to_dict(), "horizon": 2}
    config["planner"] = {**config["planner"], "max_distance": 2}
    starts = {}
    for buffers in (0, 2):
        engine = Engine(model, trace, build_policy(config), FAST_LINK, 24, check=True,
                        system=_system(buffers))
        events = engine.run().events
        check_log(events, model.expert_bytes)
        starts[buffers] = events
    held = starts[2]
    kind, detail = held["kind"].astype(str), held["detail"].astype(str)
    prefetches = held[(kind == "copy") & detail.str.startswith("prefetch")]
    experts = held[(kind == "compute") & (held["expert"] >= 0)]
    ends = experts.groupby(["step", "layer"])["end_s"].max()  # when each layer's experts end
    layer_ends = {(int(s), int(m)): float(t) for (s, m), t in ends.items()}
    n_layers = model.num_moe_layers
    late = 0
    for row in prefetches.itertuples():
        # the copy of (step, layer m) was issued at m - 1 or m - 2 (wrapping into the step
        # before); its buffer is freed by the layer two positions before its target
        target = int(row.step) * n_layers + int(row.layer)
        candidates = [target - 2, target - 2 + n_layers]  # issued this step or the one before
        frees = [0.0 if p < 0 else layer_ends.get(divmod(p, n_layers)) for p in candidates]
        assert any(t is not None and row.start_s >= t - 1e-12 for t in frees)
        late += 1
    assert late > 0
    unbounded = starts[0]
    early = unbounded[(unbounded["kind"].astype(str) == "copy")
                      & unbounded["detail"].astype(str).str.startswith("prefetch")]
    assert len(early) == len(prefetches)  # the same copies, the held ones later
    assert early["start_s"].sum() < prefetches["start_s"].sum()


@pytest.mark.parametrize("name", ["lookahead-budgeted", "gate-lookahead", "presched"])
@pytest.mark.parametrize("buffers", [1, 2])
def test_held_copies_keep_the_invariants(name: str, buffers: int) -> None:
    """Policies that cancel stale prefetches (held ones included) and prefetch far ahead."""
    model = spec(num_layers=4, num_experts=8, top_k=2)
    trace = make_trace(model, 80, requests=3, seed=4, lookahead=(1, 2))
    engine = Engine(model, trace, build_policy(name), HW, 10, batch=2, check=True,
                    system=_system(buffers))
    events = engine.run().events
    check_log(events, model.expert_bytes)
    assert not engine._held  # nothing left waiting for a buffer
    cancelled = events[events["detail"].astype(str) == "cancelled"]
    assert (cancelled["bytes"] <= model.expert_bytes).all()


def test_a_serial_runtime_ignores_staging_buffers() -> None:
    model = spec(num_layers=4, num_experts=8, top_k=2)
    trace = cyclic_trace(model, 6, period=4)
    serial = {"overlap_copies": False}
    one = Engine(model, trace, build_policy("oracle-prefetch"), FAST_LINK, 16,
                 system=_system(1, **serial)).run()
    none = Engine(model, trace, build_policy("oracle-prefetch"), FAST_LINK, 16,
                  system=_system(0, **serial)).run()
    assert one.makespan_s == none.makespan_s


def test_a_policy_runtime_sets_the_buffers() -> None:
    model = spec(num_layers=4, num_experts=8, top_k=2)
    trace = cyclic_trace(model, 6, period=4)
    config = {**load_policy_config("oracle-prefetch").to_dict(),
              "runtime": {"staging_buffers": 1}}
    by_policy = Engine(model, trace, build_policy(config), FAST_LINK, 16,
                       system=SystemProfile.ideal()).run()
    by_system = Engine(model, trace, build_policy("oracle-prefetch"), FAST_LINK, 16,
                       system=_system(1)).run()
    assert by_policy.makespan_s == by_system.makespan_s
    assert build_policy("prescope").runtime["staging_buffers"] == 2
    with pytest.raises(ConfigError, match="runtime"):
        Engine(model, trace, build_policy({**config, "runtime": {"buffers": 2}}), FAST_LINK, 16)
    with pytest.raises(ConfigError, match="runtime"):
        build_policy({**config, "runtime": [2]})


def test_staging_buffers_must_be_a_count() -> None:
    with pytest.raises(ConfigError, match="staging_buffers"):
        _system(-1)


@pytest.mark.parametrize("name", ["lookahead-budgeted", "presched", "hobbit", "confidence"])
def test_both_links_and_fast_paths_agree(name: str) -> None:
    """The SimPy reference link with every call made, and the direct link with the declared
    fast paths: the same rows under staging buffers (held and cancelled prefetches), HOBBIT's
    low-precision copies and the confidence rule's host tier."""
    import numpy as np
    from moe_offload_lab.sim.host import HostTier

    model = spec(num_layers=4, num_experts=8, top_k=2)
    trace = make_trace(model, 120, requests=3, seed=5, lookahead=(1, 2))
    config = name if name != "confidence" else {
        "name": "confidence-tiers", "horizon": 2, "predictor": {"name": "oracle"},
        "planner": {"name": "lookahead", "budget_bytes": None, "budget_experts": 0,
                    "min_confidence": 0.5, "max_distance": 1, "cancel_stale": True},
        "replacement": {"name": "confidence"}}
    frames = []
    for reference in (False, True):
        host = HostTier(14, model.num_expert_keys, HW.link_bytes_per_s, 3e9)
        engine = Engine(model, trace, build_policy(config), HW, 10, batch=2, check=True,
                        system=_system(2), host=host)
        engine.simpy_link = reference
        engine.declared_fast_paths = not reference
        frames.append(engine.run().events)
    fast, ref = frames
    assert len(fast) == len(ref) > 0
    for col in fast.columns:
        assert np.array_equal(fast[col].to_numpy(), ref[col].to_numpy()), col
