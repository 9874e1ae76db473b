"""The same checks on a real GPU (bf16, CUDA streams and events); skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
from hw_testing import CAPACITY, RecordingPolicy, tiny_spec, tiny_trace
from moe_offload_lab.hw.device import Device
from moe_offload_lab.hw.replay import DEFAULT_HARDWARE, run_replay
from moe_offload_lab.hw.store import ExpertStore
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.hardware import load_hardware

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

POLICIES = ["lru", "lru-per-layer", "on-demand", "fiddler", "belady", "lookahead-budgeted",
            "oracle-prefetch", "mixtral-offloading"]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", POLICIES)
def test_gpu_replay_matches_all_resident_within_bf16(name: str, batch: int) -> None:
    spec, trace = tiny_spec(), tiny_trace()
    ref = run_replay(spec, trace, None, resident_all=True, batch=batch, device="cuda")
    result = run_replay(spec, trace, name, capacity_slots=CAPACITY, batch=batch, device="cuda",
                        check=True)
    assert result.summary["dtype"] == "bfloat16"
    # bf16 tolerance: host bf16 kernels (CPU placement) round differently from the GPU's
    torch.testing.assert_close(result.hidden, ref.hidden, atol=5e-2, rtol=5e-2)
    assert result.stats["max_used_slots"] <= CAPACITY
    ev = result.events
    assert (ev["end_s"] >= ev["start_s"]).all()


@pytest.mark.parametrize("name", ["lru", "lfu", "lru-per-layer", "on-demand", "belady"])
def test_gpu_decisions_equal_the_simulator(name: str) -> None:
    spec, trace = tiny_spec(), tiny_trace()
    sim_policy = RecordingPolicy(build_policy(name))
    Engine(spec, trace, sim_policy, load_hardware(DEFAULT_HARDWARE), CAPACITY, 1).run()
    hw_policy = RecordingPolicy(build_policy(name))
    run_replay(spec, trace, hw_policy, capacity_slots=CAPACITY, device="cuda")
    assert hw_policy.calls == sim_policy.calls


def test_gpu_store_is_pinned_and_copies_are_timed() -> None:
    dev = Device("cuda")
    store = ExpertStore(tiny_spec(), dev)
    assert store.pinned and store.host.is_pinned()
    dev.start_clock()
    dst = dev.empty(store.numel)
    pre = dev.prefetch.copy(dst, store.buffer(0))
    dst2 = dev.empty(store.numel)
    dem = dev.demand.copy(dst2, store.buffer(1))
    dev.compute.wait(dem.end)
    dem.end.synchronize()
    pre.end.synchronize()
    dev.finish()
    assert torch.equal(dst2.cpu(), store.buffer(1))
    assert dev.event_time(dem.end) >= dev.event_time(dem.start) >= 0


@pytest.mark.parametrize("name", ["lru", "lookahead-budgeted"])
def test_gpu_reused_assets_match_fresh_ones(name: str) -> None:
    from moe_offload_lab.hw.replay import build_assets

    spec, trace = tiny_spec(), tiny_trace()
    assets = build_assets(spec, "cuda")
    assert assets.store.pinned and assets.dtype == torch.bfloat16
    fresh = run_replay(spec, trace, name, capacity_slots=CAPACITY, device="cuda")
    reused = [run_replay(spec, trace, name, capacity_slots=CAPACITY, device="cuda",
                         assets=assets) for _ in range(2)]
    for result in reused:
        # the same weights and the same kernels; CUDA's index_add_ may sum in another order
        torch.testing.assert_close(result.hidden, fresh.hidden, atol=1e-2, rtol=1e-2)
        if name == "lru":  # on-demand: the decisions do not depend on timing
            assert result.stats == fresh.stats


def test_gpu_device_by_index() -> None:
    dev = Device("cuda:0")
    assert dev.is_cuda and torch.cuda.current_device() == 0
    assert dev.empty(4).device == torch.device("cuda", 0)
    result = run_replay(tiny_spec(), tiny_trace(), "lru", capacity_slots=CAPACITY, device="cuda:0")
    assert result.summary["device"] == torch.cuda.get_device_name(0)
