"""compute_stats: the stable key layout, JSON round trip and agreement with the measures."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from moe_offload_lab.traces.analysis.report import (
    DEFAULT_LRU_FRACTIONS,
    SCHEMA,
    cache_keys_for,
    compute_stats,
)
from moe_offload_lab.traces.errors import ConfigError, TraceError

TOP_LEVEL = ["schema", "trace", "entropy_bits", "power_law_alpha", "traffic",
             "mutual_information_bits", "conditional_entropy_bits", "adjacent_reuse_ratio",
             "reuse_distance_tokens", "lru_hit_ratio", "lru_hit_ratio_curve", "belady_hit_ratio",
             "lookahead_accuracy"]


@pytest.fixture
def analysis_random_trace(analysis_make_trace):
    rng = np.random.default_rng(11)
    n_tokens, n_layers, k, n_experts = 120, 5, 2, 6
    ids = np.argsort(rng.random((n_tokens, n_layers, n_experts)), axis=2)[:, :, :k]
    ahead = np.full_like(ids, -1)
    ahead[:, :-1] = ids[:, 1:]
    return analysis_make_trace(ids, n_experts, request_id=np.repeat([3, 1, 2], 40),
                               lookahead={1: ahead})


def _is_layer_block(block, length):
    return set(block) == {"per_layer", "mean"} and len(block["per_layer"]) == length


def test_key_layout(analysis_random_trace):
    stats = compute_stats(analysis_random_trace)
    assert list(stats) == TOP_LEVEL
    assert stats["schema"] == SCHEMA == "moe-trace-stats/1"
    assert stats["trace"] == {"model": "tiny", "tokens": 120, "requests": 3, "prefill_tokens": 0,
                              "decode_tokens": 120, "moe_layers": 5, "experts": 6, "top_k": 2,
                              "lookahead_distances": [1]}
    assert set(stats["entropy_bits"]) == {"per_layer", "mean", "max"}
    assert stats["entropy_bits"]["max"] == pytest.approx(math.log2(6), abs=1e-6)
    assert _is_layer_block(stats["power_law_alpha"], 5)
    assert set(stats["traffic"]) == {"top_half_share", "experts_for_95pct"}
    assert all(_is_layer_block(b, 5) for b in stats["traffic"].values())
    mi = stats["mutual_information_bits"]
    assert set(mi) == {"cross_layer", "cross_layer_top1", "adjacent_token"}
    assert list(mi["cross_layer_top1"]) == ["1", "2", "3"]
    assert list(mi["cross_layer"]) == ["1", "2", "3"]
    for d, block in mi["cross_layer"].items():
        assert _is_layer_block(block, 5 - int(d))
    assert _is_layer_block(mi["adjacent_token"], 5)
    cond = stats["conditional_entropy_bits"]
    assert list(cond) == ["1", "2", "3"]
    for c, block in cond.items():
        assert set(block) == {"per_layer", "mean", "exploitable_bits", "contexts"}
        assert block["per_layer"][: int(c)] == [None] * int(c)
        assert None not in block["per_layer"][int(c):]
        assert isinstance(block["contexts"], int) and 1 <= block["contexts"] <= 120
    assert _is_layer_block(stats["adjacent_reuse_ratio"], 5)
    assert set(stats["reuse_distance_tokens"]) == {"mean", "p50", "p90"}
    assert list(stats["lru_hit_ratio"]) == [format(f, "g") for f in DEFAULT_LRU_FRACTIONS]
    assert list(stats["lru_hit_ratio"])[:3] == ["0.05", "0.1", "0.15"]
    assert list(stats["lru_hit_ratio"])[-1] == "1"
    curve = stats["lru_hit_ratio_curve"]
    assert curve["cache_keys"] == list(range(31)) and len(curve["hit_ratio"]) == 31
    assert list(stats["belady_hit_ratio"]) == ["0.25", "0.5"]
    assert list(stats["lookahead_accuracy"]) == ["1"]
    assert stats["lookahead_accuracy"]["1"]["per_layer"][0] is None
    assert stats["lookahead_accuracy"]["1"]["mean"] == 1.0


def test_json_round_trip_and_rounding(analysis_random_trace):
    stats = compute_stats(analysis_random_trace)
    assert json.loads(json.dumps(stats, allow_nan=False)) == stats

    def floats(node):
        if isinstance(node, dict):
            for value in node.values():
                yield from floats(value)
        elif isinstance(node, list):
            for value in node:
                yield from floats(value)
        elif isinstance(node, float):
            yield node
    assert all(round(x, 6) == x for x in floats(stats))


def test_values_agree_with_the_curve_and_each_other(analysis_random_trace):
    stats = compute_stats(analysis_random_trace, lru_fractions=(0.1, 0.5),
                          belady_fractions=(0.1, 0.5))
    curve = stats["lru_hit_ratio_curve"]["hit_ratio"]
    assert stats["lru_hit_ratio"] == {"0.1": curve[3], "0.5": curve[15]}
    for f in ("0.1", "0.5"):
        assert stats["belady_hit_ratio"][f] >= stats["lru_hit_ratio"][f]
    for c in stats["conditional_entropy_bits"].values():
        assert c["exploitable_bits"] >= 0


def test_hand_made_trace(analysis_make_trace):
    # two layers, k=1, E=2: layer 0 alternates 0/1, layer 1 copies it
    ids = [[[t % 2], [t % 2]] for t in range(8)]
    stats = compute_stats(analysis_make_trace(ids, 2), lru_fractions=(0.5, 1.0),
                          belady_fractions=(0.25,))
    assert stats["entropy_bits"] == {"per_layer": [1.0, 1.0], "mean": 1.0, "max": 1.0}
    assert stats["mutual_information_bits"]["cross_layer"] == {
        "1": {"per_layer": [1.0], "mean": 1.0}}
    assert stats["mutual_information_bits"]["cross_layer_top1"] == {
        "1": {"per_layer": [1.0], "mean": 1.0}}
    # 7 adjacent pairs (0,1) x4 and (1,0) x3: I = H(4/7, 3/7)
    h = -(4 / 7 * math.log2(4 / 7) + 3 / 7 * math.log2(3 / 7))
    assert stats["mutual_information_bits"]["adjacent_token"]["per_layer"] == [round(h, 6)] * 2
    assert stats["conditional_entropy_bits"] == {
        "1": {"per_layer": [None, 0.0], "mean": 0.0, "exploitable_bits": 1.0, "contexts": 2}}
    assert stats["adjacent_reuse_ratio"]["per_layer"] == [0.0, 0.0]
    # stream 0 2 1 3 0 2 ...: 4 first accesses, then 12 reuses each with 3 other keys between ->
    # hits only with all 4 keys cached
    assert stats["lru_hit_ratio"] == {"0.5": 0.0, "1": 0.75}
    assert stats["belady_hit_ratio"] == {"0.25": 0.0}  # C = 1 key
    assert stats["reuse_distance_tokens"] == {"mean": 2.0, "p50": 2.0, "p90": 2.0}
    assert stats["lookahead_accuracy"] == {}


def test_single_layer_and_single_token_requests(analysis_make_trace):
    stats = compute_stats(analysis_make_trace([[[0]], [[1]], [[1]]], 3, request_id=[0, 1, 2]))
    assert stats["mutual_information_bits"]["cross_layer"] == {}
    assert stats["conditional_entropy_bits"] == {}
    assert stats["mutual_information_bits"]["adjacent_token"] == {"per_layer": [None],
                                                                  "mean": None}
    assert stats["adjacent_reuse_ratio"]["mean"] is None
    json.dumps(stats, allow_nan=False)


def test_cache_sizes():
    assert cache_keys_for(0.05, 256) == 13  # 12.8
    assert cache_keys_for(0.25, 10) == 3  # 2.5 rounds half up
    assert cache_keys_for(0.01, 10) == 1  # at least one key
    assert cache_keys_for(1.0, 6144) == 6144


def test_bad_arguments(analysis_random_trace, analysis_make_trace):
    with pytest.raises(ConfigError):
        compute_stats(analysis_random_trace, lru_fractions=(0.0,))
    with pytest.raises(ConfigError):
        compute_stats(analysis_random_trace, belady_fractions=(1.5,))
    with pytest.raises(ConfigError):
        compute_stats(analysis_random_trace, max_distance=0)
    with pytest.raises(ConfigError):
        compute_stats(analysis_random_trace, context_layers=True)
    with pytest.raises(TraceError):
        compute_stats(analysis_make_trace(np.zeros((0, 2, 1)), 2))


def test_progress_bar(analysis_random_trace, monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    compute_stats(analysis_random_trace, progress=True)
    assert "trace stats" in err.getvalue()


def test_out_of_range_ids_are_refused(analysis_random_trace):
    analysis_random_trace.expert_ids[3, 1, 0] = 6  # E = 6
    with pytest.raises(TraceError):
        compute_stats(analysis_random_trace)
