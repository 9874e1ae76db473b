"""Decisions: the executor makes the same policy calls, with the same answers, as the simulator.

Timing-independent policies (fetch on demand only: every copy a layer starts is waited for within
that layer, so at every later call both engines hold the same resident set and nothing in flight,
and no decision reads a clock) must give the identical call sequence - on_layer, place, admit,
evict (with the cache state it saw), prefetch, on_fetch_done, on_evict, begin/end_step - in both
engines. fiddler's placement reads only the cost model (the same hardware profile in both) and the
token counts; belady reads the schedule, which both engines derive with static_batches.

Prefetching policies are timing-dependent: whether a prefetch has landed when the next layer's
calls happen (resident vs in flight: an in-flight key cannot be evicted, a landed one can; stale
copies are cancelled only while in flight) depends on link bandwidth against compute time, which
the simulator models and the executor measures. They are excluded here; their numerics are
checked in test_hw_equivalence.
"""

from __future__ import annotations

import pytest
from hw_testing import CAPACITY, RecordingPolicy, single_thread_torch, tiny_spec, tiny_trace
from moe_offload_lab.hw.replay import DEFAULT_HARDWARE, run_replay
from moe_offload_lab.policies.config import build_policy, load_policy_config, shape_free_policies
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.hardware import load_hardware
from moe_offload_lab.sim.metrics import summarize

TIMING_INDEPENDENT = ["belady", "fiddler", "fifo", "freq-distance", "lfu", "lifo", "lru",
                      "lru-min-count", "lru-per-layer", "on-demand"]


@pytest.fixture(autouse=True)
def _one_thread():  # noqa: ANN202
    yield from single_thread_torch()


def test_the_list_is_exactly_the_on_demand_policies() -> None:
    on_demand = [n for n in shape_free_policies()
                 if load_policy_config(n).planner["name"] == "on-demand"]
    # hobbit: same decisions, but its low-precision copies move fewer bytes in the simulator
    # than in the executor (full weights): test_hobbit_same_decisions_and_count below
    assert sorted(on_demand) == sorted([*TIMING_INDEPENDENT, "hobbit"])


@pytest.mark.parametrize("batch", [1, 3])
def test_hobbit_same_decisions_and_count(batch: int) -> None:
    spec, trace = tiny_spec(), tiny_trace()
    sim_policy = RecordingPolicy(build_policy("hobbit"))
    engine = Engine(spec, trace, sim_policy, load_hardware(DEFAULT_HARDWARE), CAPACITY, batch,
                    check=True)
    sim = engine.run()
    hw_policy = RecordingPolicy(build_policy("hobbit"))
    hw = run_replay(spec, trace, hw_policy, capacity_slots=CAPACITY, batch=batch, check=True)
    assert hw_policy.calls == sim_policy.calls
    assert [c[:4] for c in _copies(hw.events)] == [c[:4] for c in _copies(sim.events)]
    low = engine.protocol.n_lowbit
    assert low > 0 and hw.stats["lowbit_expert_computes"] == low
    # the simulator moved int4 copies (a quarter of the bytes) where the executor moved full ones
    assert summarize(sim.events)["h2d_bytes"] < summarize(hw.events)["h2d_bytes"]


def _copies(events):  # noqa: ANN001, ANN202
    rows = events[events["kind"] == "copy"]
    return sorted(zip(rows["step"], rows["layer"], rows["expert"], rows["detail"].astype(str),
                      rows["bytes"], strict=True))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", TIMING_INDEPENDENT)
def test_same_decisions_as_the_simulator(name: str, batch: int) -> None:
    spec, trace = tiny_spec(), tiny_trace()
    sim_policy = RecordingPolicy(build_policy(name))
    sim = Engine(spec, trace, sim_policy, load_hardware(DEFAULT_HARDWARE), CAPACITY, batch,
                 check=True).run()
    hw_policy = RecordingPolicy(build_policy(name))
    hw = run_replay(spec, trace, hw_policy, capacity_slots=CAPACITY, batch=batch, check=True)
    assert len(hw_policy.calls) > 0
    assert hw_policy.calls == sim_policy.calls
    assert _copies(hw.events) == _copies(sim.events)
    mine, theirs = summarize(hw.events), summarize(sim.events)
    for key in ("steps", "tokens", "accesses", "hit_rate", "h2d_bytes", "copies",
                "prefetch_copies"):
        assert mine[key] == theirs[key], key
    decisions = [c for c in hw_policy.calls if c[0] in ("evict", "place", "admit")]
    if name not in ("fiddler", "on-demand"):  # all on the host / nothing admitted
        assert any(c[0] == "evict" and c[3] for c in decisions)  # evictions happened


def test_the_executor_drives_the_shared_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    from moe_offload_lab.policies.protocol import LayerProtocol

    calls: list[tuple[int, int]] = []
    original = LayerProtocol.layer

    def counting(self, ctx):  # noqa: ANN001, ANN202
        calls.append((ctx.step, ctx.layer))
        return original(self, ctx)

    monkeypatch.setattr(LayerProtocol, "layer", counting)
    result = run_replay(tiny_spec(), tiny_trace(), "gate-lookahead", capacity_slots=CAPACITY)
    n_layers = tiny_spec().num_moe_layers
    assert calls == [(s, layer) for s in range(len(result.schedule)) for layer in range(n_layers)]
