"""Traffic concentration, adjacent-token reuse ratio and token reuse distances."""

from __future__ import annotations

import math

import numpy as np
import pytest
from moe_offload_lab.traces.analysis.cache_curves import histogram_summary
from moe_offload_lab.traces.analysis.locality import (
    adjacent_reuse_ratio,
    experts_for_95pct,
    reuse_distance_tokens,
    top_half_traffic,
)


def test_top_half_traffic():
    counts = np.array([[1, 6, 1, 2], [5, 5, 5, 5], [0, 0, 0, 0]])
    out = top_half_traffic(counts)
    assert out[:2] == pytest.approx([0.8, 0.5])
    assert math.isnan(out[2])
    # odd E: the top ceil(5/2) = 3 experts
    assert top_half_traffic(np.array([[4, 3, 2, 1, 0]]))[0] == pytest.approx(0.9)


def test_experts_for_95pct():
    counts = np.array([[95, 5, 0, 0], [94, 5, 1, 0], [25, 25, 25, 25], [0, 0, 0, 0]])
    out = experts_for_95pct(counts)
    assert out[:3] == pytest.approx([0.25, 0.5, 1.0])  # 95 % exactly is enough
    assert math.isnan(out[3])


def test_traffic_from_a_trace(analysis_make_trace):
    trace = analysis_make_trace([[[0]], [[0]], [[0]], [[1]]], num_experts=4)
    assert top_half_traffic(trace) == pytest.approx([1.0])
    assert experts_for_95pct(trace) == pytest.approx([0.5])


def test_adjacent_reuse_ratio_by_hand(analysis_make_trace):
    # one request 0,0,1,1: pairs (0,0) (0,1) (1,1) -> mean overlap 2/3;
    # chance = (2/4)^2 + (2/4)^2 = 1/2 -> ratio 4/3
    trace = analysis_make_trace([[[0]], [[0]], [[1]], [[1]]], num_experts=2)
    assert adjacent_reuse_ratio(trace) == pytest.approx([4 / 3])


def test_adjacent_reuse_ratio_with_top2(analysis_make_trace):
    # sets {0,1} {1,2} {0,1}: overlaps 1 and 1 -> 1; n = (2, 3, 1) over 3 tokens ->
    # chance = (4 + 9 + 1) / 9 = 14/9 -> ratio 9/14
    trace = analysis_make_trace([[[0, 1]], [[2, 1]], [[1, 0]]], num_experts=3)
    assert adjacent_reuse_ratio(trace) == pytest.approx([9 / 14])


def test_adjacent_reuse_ratio_needs_pairs(analysis_make_trace):
    trace = analysis_make_trace([[[0]], [[0]]], num_experts=2, request_id=[1, 2])
    assert math.isnan(adjacent_reuse_ratio(trace)[0])


def test_reuse_distance_tokens_by_hand(analysis_make_trace):
    # one layer, k=1: 0 1 0 0 -> reuse distances 2 and 1 tokens
    trace = analysis_make_trace([[[0]], [[1]], [[0]], [[0]]], num_experts=2)
    out = reuse_distance_tokens(trace)
    assert out == pytest.approx({"mean": 1.5, "p50": 1.5, "p90": 1.9})


def test_reuse_distance_counts_keys_per_layer(analysis_make_trace):
    # layer 0: 0 0 0 (distances 1, 1); layer 1: 1 2 1 (distance 2)
    trace = analysis_make_trace([[[0], [1]], [[0], [2]], [[0], [1]]], num_experts=3)
    assert reuse_distance_tokens(trace)["mean"] == pytest.approx(4 / 3)


def test_histogram_summary_matches_numpy_percentile():
    rng = np.random.default_rng(0)
    for _ in range(20):
        values = rng.integers(0, 30, rng.integers(1, 50))
        out = histogram_summary(np.bincount(values))
        assert out["mean"] == pytest.approx(values.mean())
        assert out["p50"] == pytest.approx(np.percentile(values, 50))
        assert out["p90"] == pytest.approx(np.percentile(values, 90))
    assert all(math.isnan(v) for v in histogram_summary(np.zeros(3, np.int64)).values())
