"""The side streams of a cluster layer in closed form: decision time, replica copies that pause
for the all-to-all, the exposed parts (plan wait, stall); and PROBE's double-buffered pool."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_testing import routed_trace, small_spec  # noqa: E402
from moe_offload_lab.policies.balancing.base import (  # noqa: E402
    BalanceContext,
    BalancePolicy,
    BalanceSetup,
    Plan,
    StepBatch,
    home_slots,
    round_robin_home,
)
from moe_offload_lab.sim.cluster import load_cluster, simulate_cluster  # noqa: E402
from moe_offload_lab.sim.cluster.engine import LAYER_COLUMNS, ClusterEngine  # noqa: E402
from moe_offload_lab.sim.compute import ComputeModel  # noqa: E402
from moe_offload_lab.traces.errors import ConfigError  # noqa: E402
from moe_offload_lab.traces.format import Trace  # noqa: E402

TOKENS = 64


class Scripted(BalancePolicy):
    """Layer 1: expert 0 (home rank 0) also on rank 1, half its tokens each; declared decision
    time ``(predict_s, plan_s)``; ``replicas`` more on layer 1 to break the pool's limit."""

    name = "scripted"
    pool = "double-buffer"

    def __init__(self, predict_s: float, plan_s: float, extra: int = 0) -> None:
        self.times = (predict_s, plan_s)
        self.extra = extra

    def reset(self, setup: BalanceSetup) -> None:
        self.setup = setup
        self._home = round_robin_home(setup.num_experts, setup.ranks)
        self.table = home_slots(self._home, setup.ranks, setup.base_slots)

    def home(self) -> np.ndarray:
        return self._home

    def begin_step(self, batch: StepBatch) -> None:
        pass

    def plan(self, ctx: BalanceContext) -> Plan | None:
        if ctx.layer != 1:
            return None
        replicas = np.full((2, self.setup.redundant_slots + self.extra), -1)
        replicas[1, 0] = 0
        slots = np.concatenate([self.table, replicas], axis=1)
        share = (slots >= 0).astype(float)
        share[0, 0] = share[1, self.table.shape[1]] = 0.5
        return Plan(slots, share)

    def observe(self, step: int, layer: int, load: np.ndarray) -> None:
        pass

    def decision_s(self, tokens_per_rank: int) -> tuple[float, float]:
        return self.times


def _trace():
    spec = small_spec("mixtral-8x7b", num_layers=2)  # 8 experts, top-2, 2 MoE layers
    ids = np.tile(np.array([0, 2], dtype=np.int16), (TOKENS, 2, 1))  # [T, L, k]: all on rank 0
    return Trace(spec, np.zeros(TOKENS, np.int32), np.arange(TOKENS, dtype=np.int32),
                 np.zeros(TOKENS, np.int8), ids, np.full(ids.shape, 0.5, np.float32))


def _run(policy: BalancePolicy, nvlink_gb_per_s: float = 380.0):
    trace = _trace()
    cluster = load_cluster({"base": "h100x8-nvswitch", "ranks": 2, "ranks_per_node": 2,
                            "redundant_slots": 1, "nvlink_gb_per_s": nvlink_gb_per_s})
    compute = ComputeModel(trace.spec, cluster.hardware())
    engine = ClusterEngine(cluster, trace, policy, compute, [np.arange(TOKENS)])
    engine.run()
    rows = [dict(zip(LAYER_COLUMNS, row, strict=True)) for row in engine.layers]
    return engine, cluster, rows, engine.links.records()


def test_copies_pause_for_the_all_to_all_and_a_late_one_stalls_its_rank() -> None:
    # dry run: the open (compute) time between layer 0's dispatch and layer 1's experts is layer
    # 0's expert time X0 plus layer 1's attention A, whatever the link's speed
    engine, _, rows, _ = _run(Scripted(0.0, 0.0))
    attn, x0, d_dry = rows[0]["attn_s"], rows[0]["expert_max_s"], rows[0]["dispatch_s"]
    delta = 0.25 * attn
    eb = engine.spec.expert_bytes
    latency = load_cluster("h100x8-nvswitch").nvlink_latency_s
    copy_s = x0 + attn + delta  # the copy needs delta more open link time than there is
    predict_s, plan_s = 0.15 * d_dry, 0.1 * d_dry  # layer 1's plan is ready inside dispatch(0)
    engine, cluster, rows, copies = _run(Scripted(predict_s, plan_s),
                                         eb / (copy_s - latency) / 1e9)
    l0, l1 = rows
    d0, d1 = l0["dispatch_s"], l1["dispatch_s"]
    # closed form of the single step: plan(0) is ready before layer 0's router (no wait); plan(1)
    # starts at that router and lands while dispatch(0) holds the link
    ready1 = attn + predict_s + plan_s
    assert l0["plan_wait_s"] == 0 and attn <= ready1 < attn + d0
    start = attn + d0  # the copy waits for dispatch(0) to release the link
    s1 = attn + d0 + x0 + d0 + attn + d1  # layer 1's experts start
    end = s1 + delta  # x0 + attn of open time before, delta after dispatch(1)
    assert len(copies) == 1
    step, layer, expert, src, dst, size, issued, c_start, c_end, link = copies[0]
    assert (layer, expert, src, dst, size) == (1, 0, 0, 1, eb)
    assert issued == pytest.approx(ready1) and link == pytest.approx(copy_s)
    assert c_start == pytest.approx(start) and c_end == pytest.approx(end)
    # rank 1 starts its half of expert 0 delta late; the layer's stall is what that adds
    times = engine.expert_times.of(np.array([TOKENS, TOKENS // 2, TOKENS // 2]))
    rank0, rank1 = times[0] + times[1], times[2]  # rank 0: expert 2, half of expert 0
    assert l1["stall_s"] == pytest.approx(max(rank0, delta + rank1) - max(rank0, rank1))
    assert l1["start_s"] + attn + d1 == pytest.approx(s1) and l1["plan_wait_s"] == 0
    assert l1["end_s"] == pytest.approx(s1 + max(rank0, delta + rank1) + d1)


def test_slow_decisions_delay_the_dispatch() -> None:
    _, _, rows, _ = _run(Scripted(0.0, 0.0))
    attn = rows[0]["attn_s"]
    _, _, rows, _ = _run(Scripted(0.9 * attn, 0.6 * attn))  # 1.5 attention times per plan
    l0, l1 = rows
    assert l0["plan_wait_s"] == pytest.approx(0.5 * attn)  # plan(0) ready at 1.5 A, router at A
    assert l0["decision_s"] == pytest.approx(1.5 * attn)
    # plan(1) starts at 1.5 A (the stream is busy until then) and is ready at 3 A; layer 1's
    # router runs at 1.5 A + d0 + x0 + d0 + A and its dispatch waits for the rest
    router1 = 2.5 * attn + 2 * l0["dispatch_s"] + l0["expert_max_s"]
    assert l1["plan_wait_s"] == pytest.approx(max(3 * attn - router1, 0.0))
    assert l1["start_s"] == pytest.approx(router1 - attn)


def test_the_pool_holds_at_most_r_replicas_per_rank_and_layer() -> None:
    with pytest.raises(ValueError, match="only the last R columns may change"):
        _run(Scripted(0.0, 0.0, extra=1))


def test_probe_pool_memory_is_counted_and_enforced() -> None:
    spec = small_spec("olmoe-1b-7b")
    rng = np.random.default_rng(0)
    weights = np.exp(rng.normal(0, 1.5, (spec.num_moe_layers, spec.num_experts)))
    trace = routed_trace(spec, requests=6, tokens_per_request=40, weights=weights, seed=2)
    cluster = {"base": "h100x8-nvswitch", "redundant_slots": 2}
    balances = {"static": "static", "probe": "probe-oracle",
                "eplb": {"name": "eplb", "period": 2, "warmup": 1}}
    runs = {label: simulate_cluster({"cluster": cluster, "balance": b, "batch": 2}, trace=trace)
            for label, b in balances.items()}
    static, probe, eplb = (r.summary for r in runs.values())
    layers, eb = spec.num_moe_layers, spec.expert_bytes
    base = (spec.num_experts // 8) * layers * eb + spec.shared_expert_bytes * layers \
        + spec.non_expert_bytes
    assert static["gpu_memory_needed_gb"] * 1e9 == pytest.approx(base)
    assert probe["redundant_experts_per_rank"] == 4  # two banks of R = 2
    assert probe["gpu_memory_needed_gb"] * 1e9 == pytest.approx(base + 4 * eb)
    assert eplb["redundant_experts_per_rank"] == 2 * layers  # R per layer, resident
    assert eplb["gpu_memory_needed_gb"] * 1e9 == pytest.approx(base + 2 * layers * eb)
    # never more than R replicas per rank and layer, and every copy fits its bank
    result = runs["probe"]
    assert (result.layers["replicas"] <= 8 * 2).all() and result.summary["replica_copies"] > 0
    per = result.transfers.groupby(["step", "layer", "dst"]).size()
    assert per.max() <= 2
    big = small_spec("olmoe-1b-7b", non_expert_bytes=26 * 10**9).to_dict()  # over 24 GiB
    strict = {"cluster": {"base": "h100x8-nvswitch", "redundant_slots": 2, "gpu": "rtx4090"},
              "model": big, "balance": "probe-history", "strict_memory": True}
    with pytest.raises(ConfigError, match="do not fit"):
        simulate_cluster(strict, trace=trace)
    loose = simulate_cluster({**strict, "strict_memory": False, "max_steps": 2}, trace=trace)
    assert loose.summary["fits_gpu_memory"] is False  # reported, as for single-GPU runs
    assert "fits_in_gpu_memory" not in loose.summary


def test_gate_predictors_need_the_lookahead_distance_they_read() -> None:
    # BalanceSetup.has_lookahead: a trace without lookahead columns is refused by the gate and
    # learned predictors, not silently balanced from history
    trace = _trace()
    config = {"cluster": {"base": "h100x8-nvswitch", "ranks": 2, "ranks_per_node": 2},
              "balance": "probe-gate"}
    with pytest.raises(ConfigError, match="distance 1; the trace has distances: none"):
        simulate_cluster(config, trace=trace)
    with pytest.raises(ConfigError, match="has none; balance=probe-gate runs PROBE"):
        simulate_cluster({**config, "balance": "probe"}, trace=trace)  # no features either
    ok = simulate_cluster({**config, "balance": {"name": "probe", "predictor": "history"}},
                          trace=trace)
    assert ok.summary["steps"] == 1
