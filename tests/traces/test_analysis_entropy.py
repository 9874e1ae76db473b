"""Selection counts, entropy and power-law exponent on hand-made traces."""

from __future__ import annotations

import math

import numpy as np
import pytest
from moe_offload_lab.traces.analysis.entropy import entropy_bits, expert_counts, power_law_alpha


def test_counts_count_every_slot(analysis_make_trace):
    trace = analysis_make_trace([[[0, 1], [2, 3]], [[1, 2], [3, 0]]], num_experts=4)
    counts = expert_counts(trace)
    assert counts.tolist() == [[1, 2, 1, 0], [1, 0, 1, 2]]
    assert counts.dtype == np.int64


def test_entropy_of_hand_made_layers(analysis_make_trace):
    # layer 0: experts 0/1 used 50/50 -> 1 bit; layer 1: always expert 3 -> 0 bits;
    # layer 2: uniform over 4 experts -> 2 bits
    ids = [[[0], [3], [0]], [[1], [3], [1]], [[0], [3], [2]], [[1], [3], [3]]]
    trace = analysis_make_trace(ids, num_experts=4)
    assert entropy_bits(trace) == pytest.approx([1.0, 0.0, 2.0])


def test_entropy_weights_slots_equally(analysis_make_trace):
    # k=2: one token choosing {0, 1} -> X is 0 or 1 with probability 1/2 each
    trace = analysis_make_trace([[[0, 1]]], num_experts=4)
    assert entropy_bits(trace) == pytest.approx([1.0])


def test_entropy_from_counts_and_empty_layer():
    out = entropy_bits(np.array([[2, 2, 0, 0], [0, 0, 0, 0]]))
    assert out[0] == pytest.approx(1.0)
    assert math.isnan(out[1])


@pytest.mark.parametrize(("counts", "alpha"), [
    ([12, 6, 4, 3], 1.0),   # proportional to 1 / rank
    ([36, 9, 4], 2.0),      # proportional to 1 / rank^2
    ([5, 5, 5, 5], 0.0),    # uniform
    ([3, 12, 0, 6, 4], 1.0),  # order and unused experts do not matter
])
def test_power_law_alpha_of_exact_power_laws(counts, alpha):
    assert power_law_alpha(np.array([counts]))[0] == pytest.approx(alpha, abs=1e-12)


def test_power_law_alpha_undefined_with_one_used_expert(analysis_make_trace):
    trace = analysis_make_trace([[[2]], [[2]]], num_experts=4)
    assert math.isnan(power_law_alpha(trace)[0])
