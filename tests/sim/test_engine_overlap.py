"""What overlaps what in the engine (closed forms): CPU experts against copies, resident experts
against missing ones, runtimes without overlap, batched copies, copy engines."""

from __future__ import annotations

import math

import pytest
from moe_offload_lab.policies.config import build_policy
from moe_offload_lab.sim.compute import ComputeModel
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.system import SystemProfile
from sim_testing import HW, check_log, cyclic_trace, spec

MODEL = spec(num_layers=4, num_experts=8, top_k=2)
IDEAL = SystemProfile.ideal()


class _SplitPlacement:
    """A policy whose ``place`` sends the first missing key of each layer to the CPU."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self.inner = inner
        self._where: dict[int, str] = {}

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.inner, name)

    def place(self, ctx, missing):  # noqa: ANN001, ANN201
        self._where.clear()
        for i, key in enumerate(missing):
            self._where[key] = "cpu" if i == 0 else "gpu"
        return self._where


def _run(policy, system: SystemProfile, slots: int = 8, tokens: int = 6, hw=HW):  # noqa: ANN001
    trace = cyclic_trace(MODEL, tokens=tokens, period=3)  # no reuse: every expert a miss
    engine = Engine(MODEL, trace, policy, hw, slots, batch=1, check=True, system=system)
    return engine, engine.run()


def test_cpu_experts_overlap_the_copies() -> None:
    policy = _SplitPlacement(build_policy("lru"))
    _, result = _run(policy, IDEAL)
    compute = ComputeModel(MODEL, HW)
    copy, gpu, cpu = (compute.copy_s(MODEL.expert_bytes), compute.gpu_expert_s(1),
                      compute.cpu_expert_s(1))
    # one expert copied then run on the GPU, the other on the host from the decision on
    per_layer = (compute.layer_other_s(1) + policy.decision_cost.seconds(1)
                 + max(copy + gpu, cpu))
    assert math.isclose(result.makespan_s, 6 * 4 * per_layer, rel_tol=1e-9)
    events = result.events
    cpu_rows = events[events["detail"] == "cpu"]
    gpu_rows = events[(events["kind"] == "compute") & (events["detail"] == "miss")]
    assert len(cpu_rows) == len(gpu_rows) == 6 * 4
    # every CPU expert starts before the copy of its layer's GPU expert has landed
    copies = events[events["kind"] == "copy"].set_index(["step", "layer"])["end_s"]
    starts = cpu_rows.set_index(["step", "layer"])["start_s"]
    assert (starts < copies.loc[starts.index]).all()
    check_log(events, MODEL.expert_bytes)


def test_cpu_lanes_share_the_host() -> None:
    fiddler = build_policy("fiddler")  # every miss on the CPU
    compute = ComputeModel(MODEL, HW)
    one_lane = IDEAL
    two_lanes = IDEAL.with_overrides(cpu_threads_per_expert=HW.cpu_cores // 2)
    _, serial = _run(fiddler, one_lane)
    _, parallel = _run(build_policy("fiddler"), two_lanes)
    # two experts, either one after the other at full speed or together at half speed each
    assert math.isclose(serial.makespan_s, parallel.makespan_s, rel_tol=1e-9)
    rows = parallel.events[parallel.events["detail"] == "cpu"]
    first = rows[(rows["step"] == 0) & (rows["layer"] == 0)]
    assert (first["start_s"].nunique(), len(first)) == (1, 2)  # side by side
    assert (first["end_s"] - first["start_s"]).iloc[0] == pytest.approx(
        2 * compute.cpu_expert_s(1))


def test_resident_experts_run_while_missing_ones_copy() -> None:
    """Expert 0 at every layer of every token, the other expert new each time: from the second
    token on, expert 0 is resident and runs while the other one copies; in the first token the
    first copied expert runs while the second copies."""
    import numpy as np
    from moe_offload_lab.traces.format import DECODE, Trace

    tokens, n_layers = 5, MODEL.num_moe_layers
    ids = np.zeros((tokens, n_layers, 2), np.int16)  # [T, L, 2]: expert 0 always, then 1+t
    ids[:, :, 1] = (1 + np.arange(tokens) % 7)[:, None]
    trace = Trace(spec=MODEL, request_id=np.zeros(tokens, np.int32),
                  position=np.arange(tokens, dtype=np.int32),
                  phase=np.full(tokens, DECODE, np.int8), expert_ids=ids,
                  gate_weights=np.full(ids.shape, 0.5, np.float32))
    times = {}
    for reorder in (False, True):
        system = IDEAL.with_overrides(compute_while_copying=reorder)
        policy = build_policy("lru")
        times[reorder] = Engine(MODEL, trace, policy, HW, 8, check=True,
                                system=system).run().makespan_s
    compute = ComputeModel(MODEL, HW)
    copy, gpu = compute.copy_s(MODEL.expert_bytes), compute.gpu_expert_s(1)
    decision = policy.decision_cost.seconds(1)  # what the run charged (read after its reset)
    other = compute.layer_other_s(1)
    assert copy > gpu
    warm = (tokens - 1) * n_layers
    # every layer hides one expert's compute behind a copy
    assert times[False] - times[True] == pytest.approx(tokens * n_layers * gpu, rel=1e-9)
    assert times[True] == pytest.approx(
        n_layers * (other + decision + 2 * copy + gpu)  # first token: both missing
        + warm * (other + decision + copy + gpu), rel=1e-9)


def test_without_overlap_a_layer_waits_for_its_prefetches() -> None:
    from moe_offload_lab.policies.toy_traces import make_trace

    trace = make_trace(MODEL, 40, seed=3, lookahead=(1,), lookahead_error=0.2)
    overlapped = Engine(MODEL, trace, build_policy("gate-lookahead"), HW, 12,
                        system=IDEAL).run()
    serial = Engine(MODEL, trace, build_policy("gate-lookahead"), HW, 12,
                    system=IDEAL.with_overrides(overlap_copies=False)).run()
    events = serial.events
    copies = events[(events["kind"] == "copy") & (events["bytes"] > 0)]
    assert copies["detail"].isin(["prefetch", "prefetch_used"]).any()
    experts = events[(events["kind"] == "compute") & (events["expert"] >= 0)]
    # one stream: no copy is ever moving while an expert computes
    for _, c in copies.iterrows():
        inside = experts[(experts["start_s"] < c["end_s"] - 1e-12)
                         & (experts["end_s"] > c["start_s"] + 1e-12)]
        assert inside.empty
    assert serial.makespan_s > overlapped.makespan_s


def test_batched_copies_pay_one_latency() -> None:
    hw = HW.with_overrides(copy_latency_s=1e-3)
    compute = ComputeModel(MODEL, hw)
    single = _run(build_policy("lru"), IDEAL, hw=hw)[1]
    batched = _run(build_policy("lru"), IDEAL.with_overrides(batched_copies=True), hw=hw)[1]
    # two demand copies per layer, 24 layers: one latency saved in each
    assert single.makespan_s - batched.makespan_s == pytest.approx(24 * 1e-3, rel=1e-6)
    rows = batched.events[batched.events["kind"] == "copy"]
    assert len(rows) == 48 and (rows["bytes"] == MODEL.expert_bytes).all()
    check_log(batched.events, MODEL.expert_bytes)
    del compute


def test_a_second_copy_engine_hides_back_to_back_latencies() -> None:
    hw1 = HW.with_overrides(copy_latency_s=1e-3, copy_engines=1)
    hw2 = hw1.with_overrides(copy_engines=2)
    one = _run(build_policy("lru"), IDEAL, hw=hw1)[1]
    two = _run(build_policy("lru"), IDEAL, hw=hw2)[1]
    # the layer's second copy starts when the first ends: its latency is hidden
    assert one.makespan_s - two.makespan_s == pytest.approx(24 * 1e-3, rel=1e-6)


def test_each_wait_for_a_copy_costs_the_runtime_its_sync() -> None:
    sync = 2e-4
    plain = _run(build_policy("lru"), IDEAL)[1]
    synced = _run(build_policy("lru"), IDEAL.with_overrides(copy_sync_s=sync))[1]
    assert synced.makespan_s - plain.makespan_s == pytest.approx(24 * sync, rel=1e-6)


def test_a_writeback_runtime_moves_the_evicted_expert_back() -> None:
    compute = ComputeModel(MODEL, HW)
    plain = _run(build_policy("lru"), IDEAL)[1]
    swapping = _run(build_policy("lru"), IDEAL.with_overrides(writeback_evicted=True))[1]
    # the first token fills the 8 empty slots; each later copy evicts one expert and writes it
    # back on the same stream: the link is busy its bytes twice, and the layer waits for it
    writebacks = (6 - 1) * 4 * 2
    assert swapping.makespan_s - plain.makespan_s == pytest.approx(
        writebacks * MODEL.expert_bytes / compute.link_bytes_per_s, rel=1e-9)
    assert (swapping.events["bytes"] == plain.events["bytes"]).all()  # bytes count one way
    check_log(swapping.events, MODEL.expert_bytes)
