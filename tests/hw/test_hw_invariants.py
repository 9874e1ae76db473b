"""Event-log invariants of replay runs (the simulator's schema, read by sim.metrics unchanged)."""

from __future__ import annotations

import numpy as np
import pytest
from hw_testing import CAPACITY, single_thread_torch, tiny_spec, tiny_trace
from moe_offload_lab.hw.replay import run_replay
from moe_offload_lab.policies.needs import step_experts
from moe_offload_lab.sim.eventlog import COLUMNS
from moe_offload_lab.sim.metrics import step_frame, summarize

CASES = [("lru", 1), ("lru-min-count", 3), ("on-demand", 1), ("fiddler", 3),
         ("lookahead-budgeted", 1), ("oracle-prefetch", 3), ("mixtral-offloading", 1)]


@pytest.fixture(autouse=True)
def _one_thread():  # noqa: ANN202
    yield from single_thread_torch()


@pytest.mark.parametrize(("name", "batch"), CASES)
def test_event_log_invariants(name: str, batch: int) -> None:
    spec, trace = tiny_spec(), tiny_trace()
    result = run_replay(spec, trace, name, capacity_slots=CAPACITY, batch=batch,
                        twin_copies_per_layer=1, check=True)
    ev = result.events
    assert tuple(ev.columns) == COLUMNS
    assert (ev["end_s"] >= ev["start_s"]).all()
    assert (ev["start_s"] >= 0).all()
    # one expert compute row per (step, layer, distinct expert), as the schedule implies
    expected = 0
    for rows in result.schedule:
        experts, _ = step_experts(trace.expert_ids[rows], spec.num_experts)
        expected += sum(len(e) for e in experts)
    experts_rows = ev[(ev["kind"] == "compute") & (ev["expert"] >= 0)]
    assert len(experts_rows) == expected
    # tokens per expert row add up to B * k per layer
    per_step = experts_rows.groupby("step")["count"].sum().to_numpy()
    sizes = np.array([len(r) for r in result.schedule])
    assert (per_step == sizes * spec.top_k * spec.num_moe_layers).all()
    # bytes: every copy that ran moved one expert; cancelled ones what crossed (0 or all)
    copies = ev[ev["kind"] == "copy"]
    expert_bytes = spec.expert_bytes
    ran = copies[copies["detail"] != "cancelled"]
    assert (ran["bytes"] == expert_bytes).all()
    assert copies["bytes"].isin([0, expert_bytes]).all()
    summary = summarize(ev)
    assert summary["h2d_bytes"] == copies["bytes"].sum()
    stats = result.stats
    issued = stats["fetches"] + stats["streams"] + stats["prefetches"]
    assert len(copies) == issued
    assert summary["copies"] == issued - stats["cancelled"]  # fetches that were not abandoned
    assert summary["h2d_bytes"] == len(ran) * expert_bytes + \
        int(copies.loc[copies["detail"] == "cancelled", "bytes"].sum())
    # cpu rows only where the policy placed experts on the host, on the cpu resource
    cpu_rows = experts_rows[experts_rows["detail"] == "cpu"]
    assert (cpu_rows["resource"] == "cpu").all()
    assert len(cpu_rows) == result.stats["cpu_experts"]
    # steps: one row each, in order; the step frame and summary read them
    steps = step_frame(ev)
    assert steps["step"].tolist() == list(range(len(result.schedule)))
    assert (steps["latency_s"] > 0).all()
    assert result.summary["steps"] == len(result.schedule)
    assert result.summary["tokens"] == sum(len(r) for r in result.schedule)
    assert result.stats["max_used_slots"] <= CAPACITY
    assert result.summary["sim_wall_s"] > 0
    assert result.hidden.shape == (len(result.rows), spec.hidden_size)


def test_all_resident_only_hits_and_no_copies() -> None:
    result = run_replay(tiny_spec(), tiny_trace(), None, resident_all=True, batch=3)
    ev = result.events
    assert not (ev["kind"] == "copy").any()
    assert result.summary["hit_rate"] == 1.0
    assert result.summary["policy"] == "all-resident"
    assert result.capacity_slots == tiny_spec().num_expert_keys


def test_budget_sizes_the_cache_like_the_simulator() -> None:
    from moe_offload_lab.sim.hardware import load_hardware
    from moe_offload_lab.sim.memory import GpuMemory

    spec = tiny_spec()
    budget = 8 * spec.expert_bytes / 1e9
    result = run_replay(spec, tiny_trace(), "lru", gpu_memory_gb=budget)
    plan = GpuMemory.plan({"gpu_memory_gb": budget}, spec, load_hardware("h100-sxm"))
    assert result.capacity_slots == plan.slots == 8


def test_prefill_off_runs_decode_only() -> None:
    trace = tiny_trace()
    result = run_replay(tiny_spec(), trace, "lru", capacity_slots=CAPACITY, prefill=False)
    assert (trace.phase[result.rows] != 0).all()
    assert result.summary["decode_steps"] == result.summary["steps"]
