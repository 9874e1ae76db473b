"""Engine invariants: link bandwidth, layer time, conservation, stalls, outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_testing import routed_trace, small_spec  # noqa: E402
from moe_offload_lab.sim.cluster import load_cluster, simulate_cluster, volatile_trace  # noqa: E402
from moe_offload_lab.sim.cluster.alltoall import alltoall  # noqa: E402

EPS = 1e-12


def _skewed_run(cluster: object, balance: object = "probe-oracle", decode: bool = False):
    spec = small_spec()
    rng = np.random.default_rng(0)
    weights = np.exp(rng.normal(0, 1.5, (spec.num_moe_layers, spec.num_experts)))
    trace = routed_trace(spec, requests=6, tokens_per_request=40, weights=weights, seed=2,
                         decode=decode)
    return trace, simulate_cluster({"cluster": cluster, "balance": balance, "batch": 2},
                                   trace=trace)


@pytest.fixture(scope="module")
def skewed():
    return _skewed_run({"base": "h100x8-nvswitch", "redundant_slots": 2})


def test_replica_copies_never_exceed_link_bandwidth(skewed) -> None:
    _, result = skewed
    transfers = result.transfers
    assert len(transfers) > 0
    cluster = load_cluster("h100x8-nvswitch")
    for _, rows in transfers.groupby("dst"):
        rows = rows.sort_values("start_s")
        start, end = rows["start_s"].to_numpy(), rows["end_s"].to_numpy()
        assert (start[1:] >= end[:-1] - EPS).all()  # one copy at a time per ingress link
        rate = rows["bytes"].to_numpy() / (end - start)
        assert (rate <= cluster.nvlink_gb_per_s * 1e9 * (1 + 1e-9)).all()


def test_layer_time_covers_the_slowest_rank(skewed) -> None:
    _, result = skewed
    layers = result.layers
    span = layers["end_s"] - layers["start_s"]
    floor = layers["attn_s"] + 2 * layers["dispatch_s"] + layers["expert_max_s"]
    assert (span >= floor + layers["stall_s"] - 1e-9).all()
    assert (layers["expert_max_s"] >= layers["expert_mean_s"] - EPS).all()


def test_every_routed_pair_is_computed_once(skewed) -> None:
    trace, result = skewed
    layers = result.layers
    assert np.array_equal(layers["routed_pairs"], layers["computed_pairs"])
    assert layers["routed_pairs"].sum() == trace.num_tokens * trace.spec.num_moe_layers \
        * trace.spec.top_k


def test_late_replicas_stall_the_layer_unless_the_window_is_respected() -> None:
    slow = {"base": "h100x8-nvswitch", "redundant_slots": 2, "nvlink_gb_per_s": 0.5}
    blind = {"name": "probe-oracle", "window": False}
    _, result = _skewed_run(slow, blind)
    assert result.summary["stall_s"] > 0
    _, fast = _skewed_run({"base": "h100x8-nvswitch", "redundant_slots": 2}, blind)
    assert result.summary["total_s"] > fast.summary["total_s"]
    # PROBE plans only the copies that land in time: on the slow link it copies nothing
    _, careful = _skewed_run(slow, "probe-oracle")
    assert careful.summary["stall_s"] == 0 and careful.summary["replica_copies"] == 0


def test_static_policy_moves_nothing(skewed) -> None:
    trace, _ = skewed
    result = simulate_cluster({"cluster": "h100x8-nvswitch", "balance": "static", "batch": 2},
                              trace=trace)
    assert result.summary["replica_bytes"] == 0 and result.summary["stall_s"] == 0
    layers = result.layers
    assert np.allclose(layers["imbalance_before"], layers["imbalance_after"])


def test_alltoall_uses_infiniband_across_nodes() -> None:
    cluster = load_cluster("h100x16-2nodes-ib")
    pairs = np.zeros((16, 16))
    pairs[0, 8] = 1000.0  # node 0 -> node 1
    a2a = alltoall(pairs, cluster, 7168 * 2)
    expected = cluster.ib_latency_s + 1000 * 7168 * 2 / (cluster.ib_gb_per_s * 1e9)
    assert a2a.time_s == pytest.approx(expected)
    assert a2a.bytes_inter == a2a.bytes_total
    pairs = np.zeros((16, 16))
    pairs[0, 1] = 1000.0  # inside node 0
    a2a = alltoall(pairs, cluster, 7168 * 2)
    assert a2a.time_s == pytest.approx(cluster.nvlink_latency_s
                                       + 1000 * 7168 * 2 / (cluster.nvlink_gb_per_s * 1e9))


def test_volatile_trace_moves_hot_experts() -> None:
    spec = small_spec()
    weights = np.ones((spec.num_moe_layers, spec.num_experts))
    weights[:, :4] = 30.0
    trace = routed_trace(spec, requests=4, tokens_per_request=200, weights=weights, seed=4)
    shifted = volatile_trace(trace, shift_every=1, burst_every=50, burst_len=10, seed=1)
    shifted.validate()
    hot = []
    for r in range(4):
        rows = (shifted.request_id == r) & (shifted.position % 50 >= 10)
        counts = np.bincount(shifted.expert_ids[rows, 0].ravel(), minlength=spec.num_experts)
        hot.append(set(np.argsort(-counts)[:4].tolist()))
    assert len({frozenset(h) for h in hot}) > 1  # the hot set moved between requests
    # Each piece of a request (outside bursts, and each burst window) is relabelled by one
    # permutation per layer: old -> new ids is a bijection there, so the multiset of
    # per-expert loads of the piece is kept, layer by layer.
    window = np.where(trace.position % 50 < 10, trace.position // 50, -1)  # -1: outside bursts
    pieces = 0
    for r in range(4):
        for w in np.unique(window[trace.request_id == r]):
            rows = (trace.request_id == r) & (window == w)
            for layer in range(spec.num_moe_layers):
                old = trace.expert_ids[rows, layer].ravel()
                new = shifted.expert_ids[rows, layer].ravel()
                pairs = set(zip(old.tolist(), new.tolist(), strict=True))
                assert len({o for o, _ in pairs}) == len(pairs) == len({n for _, n in pairs})
                before = np.sort(np.bincount(old, minlength=spec.num_experts))
                after = np.sort(np.bincount(new, minlength=spec.num_experts))
                assert np.array_equal(before, after)
                pieces += 1
    assert pieces > 4 * spec.num_moe_layers  # burst windows were checked too


def test_write_outputs(skewed, tmp_path: Path) -> None:
    _, result = skewed
    paths = result.write(tmp_path / "ep")
    names = {p.name for p in paths}
    assert names == {"steps.parquet", "layers.parquet", "transfers.parquet", "timeline.json",
                     "summary.json"}
    transfers = pd.read_parquet(tmp_path / "ep" / "transfers.parquet")
    assert len(transfers) == result.summary["replica_copies"] > 0
    steps = pd.read_parquet(tmp_path / "ep" / "steps.parquet")
    assert len(steps) == result.summary["steps"]
    timeline = json.loads((tmp_path / "ep" / "timeline.json").read_text())
    tracks = {e["tid"] for e in timeline["traceEvents"] if e["ph"] == "X"}
    assert tracks == set(range(9))  # 8 ranks + replica copies
    summary = json.loads((tmp_path / "ep" / "summary.json").read_text())
    assert summary["replica_bytes"] > 0
    assert not list((tmp_path / "ep").glob(".*.tmp"))
