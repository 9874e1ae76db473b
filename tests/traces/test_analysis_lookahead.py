"""Lookahead accuracy against a known corruption."""

from __future__ import annotations

import math

import numpy as np
import pytest
from moe_offload_lab.traces.analysis.lookahead import lookahead_accuracy


def _lookahead(ids: np.ndarray, distance: int) -> np.ndarray:
    out = np.full_like(ids, -1)
    out[:, : ids.shape[1] - distance] = ids[:, distance:]
    return out


def test_lookahead_accuracy_of_a_known_corruption(analysis_make_trace):
    rng = np.random.default_rng(0)
    n_tokens, n_layers, k, n_experts = 40, 4, 2, 8
    ids = np.stack([[rng.choice(n_experts, k, replace=False) for _ in range(n_layers)]
                    for _ in range(n_tokens)])
    exact = _lookahead(ids, 1)
    half = _lookahead(ids, 2)
    # distance 2: replace one of the two slots by an expert outside the true set -> 1/2
    for t in range(n_tokens):
        for layer in range(n_layers - 2):
            wrong = next(e for e in range(n_experts) if e not in ids[t, layer + 2])
            half[t, layer, 1] = wrong
    # distance 3: every other token gets a completely wrong prediction -> 1/2
    third = _lookahead(ids, 3)
    for t in range(0, n_tokens, 2):
        third[t, 0] = [e for e in range(n_experts) if e not in ids[t, 3]][:k]
    trace = analysis_make_trace(ids, n_experts, lookahead={1: exact, 2: half, 3: third})
    acc = lookahead_accuracy(trace)
    assert sorted(acc) == [1, 2, 3]
    assert math.isnan(acc[1][0]) and acc[1][1:] == pytest.approx([1.0, 1.0, 1.0])
    assert np.isnan(acc[2][:2]).all() and acc[2][2:] == pytest.approx([0.5, 0.5])
    assert np.isnan(acc[3][:3]).all() and acc[3][3] == pytest.approx(0.5)


def test_order_within_a_prediction_does_not_matter(analysis_make_trace):
    ids = np.array([[[0, 1], [2, 3]], [[1, 2], [0, 3]]])
    pred = np.full_like(ids, -1)
    pred[:, 0] = [[3, 2], [3, 1]]  # token 0 exact (reordered), token 1 half right
    acc = lookahead_accuracy(analysis_make_trace(ids, 4, lookahead={1: pred}))
    assert acc[1][1] == pytest.approx(0.75)


def test_no_lookahead(analysis_make_trace):
    assert lookahead_accuracy(analysis_make_trace([[[0]]], 2)) == {}
