"""Mutual information and conditional entropy on hand-made traces, plus the coding kernels."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from moe_offload_lab.traces.analysis.information import (
    _conditional_entropy,
    _densify,
    adjacent_joint,
    adjacent_mutual_information,
    adjacent_pairs,
    conditional_entropy,
    cross_layer_mutual_information,
    layer_major_routing,
    set_codes,
    top1_cross_layer_mutual_information,
)


def test_mutual_information_of_a_deterministic_mapping_equals_entropy(analysis_make_trace):
    # layer 1 is a permutation of layer 0, layer 0 uniform over 4 experts -> I = H = 2 bits
    perm = [2, 0, 3, 1]
    ids = [[[e], [perm[e]]] for e in (0, 1, 2, 3, 0, 1, 2, 3)]
    mi = cross_layer_mutual_information(analysis_make_trace(ids, num_experts=4), max_distance=3)
    assert list(mi) == [1]  # d >= L is skipped
    assert mi[1] == pytest.approx([2.0])


def test_mutual_information_of_independent_layers_is_zero(analysis_make_trace):
    ids = [[[a], [b], [a]] for a, b in itertools.product(range(4), range(3))]
    mi = cross_layer_mutual_information(analysis_make_trace(ids, num_experts=4), max_distance=2)
    assert mi[1] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert mi[2] == pytest.approx([2.0])  # layer 2 copies layer 0
    assert mi[1].shape == (2,) and mi[2].shape == (1,)


def test_mutual_information_pairs_all_slots(analysis_make_trace):
    # one token, k=2: pairs (0,2) (0,3) (1,2) (1,3) each 1/4 -> a product distribution -> 0 bits
    assert cross_layer_mutual_information(
        analysis_make_trace([[[0, 1], [2, 3]]], num_experts=4))[1] == pytest.approx([0.0])
    # two tokens {0,1}->{2,3} and {2,3}->{0,1}: X_0 in {0,1} determines the half of X_1: 1 bit
    trace = analysis_make_trace([[[0, 1], [2, 3]], [[2, 3], [0, 1]]], num_experts=4)
    assert cross_layer_mutual_information(trace)[1] == pytest.approx([1.0])


def test_adjacent_pairs_stay_within_requests():
    earlier, later = adjacent_pairs(np.array([5, 5, 5, 7, 7, 2]))
    assert earlier.tolist() == [0, 1, 3] and later.tolist() == [1, 2, 4]
    # interleaved requests: each row pairs with the previous row of its own request
    earlier, later = adjacent_pairs(np.array([1, 2, 1, 2, 1]))
    assert sorted(zip(earlier.tolist(), later.tolist(), strict=True)) == [(0, 2), (1, 3), (2, 4)]
    assert adjacent_pairs(np.array([3]))[0].size == 0


def test_adjacent_mutual_information(analysis_make_trace):
    # alternating 0,1,0,1,0 in one request: the next token is determined -> 1 bit
    trace = analysis_make_trace([[[0]], [[1]], [[0]], [[1]], [[0]]], num_experts=2)
    assert adjacent_mutual_information(trace) == pytest.approx([1.0])
    # two requests [0, 0] and [1, 1]: the boundary pair (0, 1) is not adjacent -> 1 bit
    trace = analysis_make_trace([[[0]], [[0]], [[1]], [[1]]], num_experts=2,
                                request_id=[0, 0, 1, 1])
    joint = adjacent_joint(trace)
    assert joint[0].tolist() == [[1, 0], [0, 1]]
    assert adjacent_mutual_information(trace, joint=joint) == pytest.approx([1.0])
    # no request with two tokens: undefined
    single = analysis_make_trace([[[0]], [[1]]], num_experts=2, request_id=[0, 1])
    assert math.isnan(adjacent_mutual_information(single)[0])


def test_conditional_entropy_by_hand(analysis_make_trace):
    # layer 0 = [0,0,1,1], layer 1 = [0,1,2,2]: H(X1) = 1.5; given S0: context 0 -> {0,1} (1 bit),
    # context 1 -> always 2 (0 bits) -> 0.5 bits; exploitable 1.0 bit; 2 contexts
    trace = analysis_make_trace([[[0], [0]], [[0], [1]], [[1], [2]], [[1], [2]]], num_experts=4)
    result = conditional_entropy(trace, context_layers=3)
    assert list(result) == [1]  # c >= L is skipped
    assert math.isnan(result[1].per_layer[0])
    assert result[1].per_layer[1] == pytest.approx(0.5)
    assert result[1].exploitable[1] == pytest.approx(1.0)
    assert result[1].contexts.tolist() == [0, 2]


def test_conditional_entropy_of_a_deterministic_chain_is_zero(analysis_make_trace):
    rng = np.random.default_rng(3)
    first = rng.integers(0, 8, 200)
    ids = np.stack([(first * 3 + layer) % 8 for layer in range(5)], axis=1)[:, :, None]
    trace = analysis_make_trace(ids, num_experts=8)
    result = conditional_entropy(trace, context_layers=3)
    for c in (1, 2, 3):
        assert np.isnan(result[c].per_layer[:c]).all()
        assert result[c].per_layer[c:] == pytest.approx(0.0, abs=1e-12)
        assert result[c].contexts[c:].max() <= 8


def test_conditional_entropy_uses_sets_not_slot_order(analysis_make_trace):
    # the same set in two slot orders is one context
    ids = [[[0, 1], [2, 3]], [[1, 0], [2, 3]], [[2, 3], [0, 1]], [[3, 2], [0, 1]]]
    result = conditional_entropy(analysis_make_trace(ids, num_experts=4), context_layers=1)
    assert result[1].contexts[1] == 2
    assert result[1].per_layer[1] == pytest.approx(1.0)  # log2 k: each set determined, 2 slots


def test_independent_layers_keep_their_entropy(analysis_make_trace):
    # every combination of (layer 0, layer 1) once: knowing layer 0 tells nothing
    ids = [[[a], [b]] for a, b in itertools.product(range(4), range(4))]
    result = conditional_entropy(analysis_make_trace(ids, num_experts=4), context_layers=1)
    assert result[1].per_layer[1] == pytest.approx(2.0)
    assert result[1].exploitable[1] == pytest.approx(0.0, abs=1e-12)


def test_set_codes_with_several_packed_chunks(analysis_make_trace):
    # E=300, k=8: 300**8 overflows int64, so the sorted ids are packed in two chunks
    rng = np.random.default_rng(0)
    base = np.stack([rng.choice(300, 8, replace=False) for _ in range(5)])
    rows = base[rng.integers(0, 5, 60)]
    rows = np.stack([rng.permutation(r) for r in rows])  # shuffle slot order
    trace = analysis_make_trace(rows[:, None, :], num_experts=300)
    codes, n = set_codes(trace, 0)
    _, expected = np.unique(np.sort(rows, axis=1), axis=0, return_inverse=True)
    assert n == np.unique(expected).size
    # same partition of the tokens
    assert all((codes == codes[i]).tolist() == (expected == expected[i]).tolist()
               for i in range(len(rows)))


@pytest.mark.parametrize("spread", [4, 1 << 40])  # direct table / hash table
def test_densify_matches_first_appearance_order(spread):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 6, 5000) * spread
    b = rng.integers(0, 7, 5000)
    codes, n = _densify(a, b)
    seen: dict[tuple[int, int], int] = {}
    expected = [seen.setdefault(pair, len(seen)) for pair in zip(a.tolist(), b.tolist(),
                                                                  strict=True)]
    assert codes.tolist() == expected and n == len(seen)


def test_conditional_entropy_kernel_paths_agree():
    rng = np.random.default_rng(2)
    context = rng.integers(0, 50, 3000)
    layer_ids = np.stack([rng.choice(16, 3, replace=False) for _ in range(3000)]).astype(np.int16)
    table = _conditional_entropy(context, 50, layer_ids, 16)
    grouped = _conditional_entropy(context, 1 << 21, layer_ids, 16)  # forces the grouped path
    # reference: H(context, X) - H(context) with numpy
    pairs = np.unique(np.stack([np.repeat(context, 3), layer_ids.reshape(-1)]), axis=1,
                      return_counts=True)[1] / (3000 * 3)
    ctx = np.unique(context, return_counts=True)[1] / 3000
    reference = -(pairs * np.log2(pairs)).sum() + (ctx * np.log2(ctx)).sum()
    assert table == pytest.approx(reference) and grouped == pytest.approx(reference)


def test_layer_major_routing(analysis_make_trace):
    trace = analysis_make_trace(np.arange(24).reshape(4, 3, 2) % 6, num_experts=6)
    lm = layer_major_routing(trace)
    assert lm.shape == (3, 4, 2) and lm.dtype == np.int16
    assert (lm == trace.expert_ids.transpose(1, 0, 2)).all()


def test_top1_mutual_information_follows_the_largest_gate(analysis_make_trace):
    # k=2: the top-1 expert (largest gate) of layer 1 is a permutation of layer 0's top-1, while
    # the second slot is noise -> top-1 MI = H(top-1) = 2 bits; the slot-pair MI is diluted.
    perm = [2, 0, 3, 1]
    ids = [[[a, (a + 1 + b) % 4], [perm[a], (perm[a] + 1 + (b + 1) % 3) % 4]]
           for a in range(4) for b in range(3)]
    trace = analysis_make_trace(ids, num_experts=4)
    trace.gate_weights[:] = [0.7, 0.3]
    top1 = top1_cross_layer_mutual_information(trace)
    assert list(top1) == [1] and top1[1] == pytest.approx([2.0])
    assert cross_layer_mutual_information(trace)[1][0] < 1.0
    # Swapping the gates makes the noisier slot the top-1: the measure follows the gates.
    trace.gate_weights[:] = [0.3, 0.7]
    assert top1_cross_layer_mutual_information(trace)[1][0] < 1.5
