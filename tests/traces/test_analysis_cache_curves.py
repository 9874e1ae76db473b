"""LRU stack distances, the one-pass hit-ratio curve and Belady's MIN against direct simulation."""

from __future__ import annotations

import functools
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moe_offload_lab.traces.analysis.cache_curves import (
    access_keys,
    belady_hit_ratio,
    belady_hit_ratios,
    hit_ratio_curve,
    lru_hit_ratio_curve,
    lru_pass,
    stack_distances,
    stream_belady_hits,
    stream_lru_pass,
)
from moe_offload_lab.traces.errors import ConfigError


# ---- reference simulators (plain Python) --------------------------------------------------------
def lru_hits(keys: list[int], capacity: int) -> int:
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for key in keys:
        if key in cache:
            hits += 1
            cache.move_to_end(key)
        elif capacity > 0:
            if len(cache) == capacity:
                cache.popitem(last=False)
            cache[key] = None
    return hits


def min_hits(keys: list[int], capacity: int) -> int:
    """Belady's MIN by brute force: on a miss into a full cache evict the farthest next use."""
    cache: set[int] = set()
    hits = 0
    for i, key in enumerate(keys):
        if key in cache:
            hits += 1
            continue
        if capacity == 0:
            continue
        if len(cache) == capacity:
            future = keys[i + 1:]
            cache.remove(max(cache, key=lambda other, future=future: (
                future.index(other) if other in future else len(future))))
        cache.add(key)
    return hits


def optimal_hits(keys: tuple[int, ...], capacity: int) -> int:
    """The best any demand-paging policy can do: exhaustive search over eviction choices."""
    @functools.cache
    def best(i: int, cache: frozenset[int]) -> int:
        if i == len(keys):
            return 0
        key = keys[i]
        if key in cache:
            return 1 + best(i + 1, cache)
        if capacity == 0:
            return best(i + 1, cache)
        if len(cache) < capacity:
            return best(i + 1, cache | {key})
        return max(best(i + 1, (cache - {victim}) | {key}) for victim in cache)
    return best(0, frozenset())


def distances_by_definition(keys: list[int]) -> list[int]:
    last: dict[int, int] = {}
    out = []
    for i, key in enumerate(keys):
        out.append(len(set(keys[last[key] + 1: i]) - {key}) if key in last else -1)
        last[key] = i
    return out


streams = st.integers(1, 9).flatmap(
    lambda n_keys: st.tuples(st.just(n_keys),
                             st.lists(st.integers(0, n_keys - 1), max_size=60)))


# ---- hand-worked sequence -----------------------------------------------------------------------
STREAM = [0, 1, 2, 0, 1, 3, 0]  # a b c a b d a


def test_stack_distances_by_hand():
    assert stack_distances(np.array(STREAM), 4).tolist() == [-1, -1, -1, 2, 2, -1, 2]


def test_lru_curve_by_hand():
    curve = stream_lru_pass(np.array(STREAM), 4).hit_ratio_curve()
    assert (curve * 7).round().tolist() == [0, 0, 0, 3, 3]


def test_belady_by_hand():
    # C=2: a b c(evict b) a* b(evict c) d(evict b) a* -> 2 hits; C=3: a* b* a* -> 3 hits
    assert stream_belady_hits(np.array(STREAM), 4, [0, 1, 2, 3, 4]).tolist() == [0, 0, 2, 3, 3]


# ---- properties ---------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(streams)
def test_one_pass_lru_curve_equals_direct_simulation_at_every_size(case):
    n_keys, keys = case
    result = stream_lru_pass(np.array(keys, dtype=np.int64), n_keys)
    curve = result.hit_ratio_curve()
    assert curve.shape == (n_keys + 1,)
    for capacity in range(n_keys + 1):
        assert round(curve[capacity] * len(keys)) == lru_hits(keys, capacity)
    assert stack_distances(np.array(keys, dtype=np.int64), n_keys).tolist() == \
        distances_by_definition(keys)


@settings(max_examples=300, deadline=None)
@given(streams)
def test_belady_equals_brute_force_and_beats_lru(case):
    n_keys, keys = case
    sizes = list(range(n_keys + 1))
    belady = stream_belady_hits(np.array(keys, dtype=np.int64), n_keys, sizes)
    for capacity in sizes:
        assert belady[capacity] == min_hits(keys, capacity)
        assert belady[capacity] >= lru_hits(keys, capacity)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=10), st.integers(0, 4))
def test_belady_is_optimal_on_tiny_streams(keys, capacity):
    hits = stream_belady_hits(np.array(keys, dtype=np.int64), 4, capacity)[0]
    assert hits == optimal_hits(tuple(keys), capacity)


@pytest.mark.parametrize("n_keys", [3, 50, 700])
def test_long_streams_exercise_slot_compaction(n_keys):
    rng = np.random.default_rng(n_keys)
    keys = rng.integers(0, n_keys, 6000)
    keys[::7] = rng.integers(0, 3, keys[::7].size)  # some hot keys
    distances = stack_distances(keys, n_keys)
    assert distances.tolist() == distances_by_definition(keys.tolist())
    curve = stream_lru_pass(keys, n_keys).hit_ratio_curve()
    for capacity in range(0, n_keys + 1, max(1, n_keys // 9)):
        assert round(curve[capacity] * keys.size) == lru_hits(keys.tolist(), capacity)
    sizes = [1, 2, n_keys // 3, n_keys // 2]
    belady = stream_belady_hits(keys[:1500], n_keys, sizes)
    assert belady.tolist() == [min_hits(keys[:1500].tolist(), c) for c in sizes]


# ---- traces -------------------------------------------------------------------------------------
def test_trace_stream_order(analysis_make_trace):
    trace = analysis_make_trace([[[0, 1], [1, 2]], [[2, 0], [0, 1]]], num_experts=3)
    # key = layer * E + expert, token by token, layer by layer, slot by slot
    assert access_keys(trace).tolist() == [0, 1, 4, 5, 2, 0, 3, 4]


def test_trace_passes_equal_stream_passes(analysis_make_trace):
    rng = np.random.default_rng(5)
    ids = np.stack([[rng.choice(6, 2, replace=False) for _ in range(3)] for _ in range(300)])
    trace = analysis_make_trace(ids, num_experts=6)
    keys = access_keys(trace)
    n_keys = trace.spec.num_expert_keys
    result = lru_pass(trace, with_next_uses=True)
    stream = stream_lru_pass(keys, n_keys)
    assert (result.stack_histogram == stream.stack_histogram).all()
    assert result.num_accesses == keys.size
    assert np.array_equal(lru_hit_ratio_curve(trace), hit_ratio_curve(stream.stack_histogram))
    # next uses: the following index of the same key, N when none
    expected = np.full(keys.size, keys.size)
    last: dict[int, int] = {}
    for i, key in enumerate(keys.tolist()):
        if key in last:
            expected[last[key]] = i
        last[key] = i
    assert result.next_uses.tolist() == expected.tolist()
    sizes = [1, 4, 9, 18]
    ratios = belady_hit_ratios(trace, sizes, next_uses=result.next_uses)
    assert (ratios * keys.size).round().tolist() == [min_hits(keys.tolist(), c) for c in sizes]
    assert belady_hit_ratio(trace, 9) == ratios[2]
    # token reuse histogram: one 'token' per access for a plain stream, tokens for a trace
    assert result.token_histogram.size == 300 and result.token_histogram[0] == 0


def test_bad_inputs():
    with pytest.raises(ConfigError):
        stack_distances(np.array([0, 5]), 3)
    with pytest.raises(ConfigError):
        stream_belady_hits(np.array([0, 1]), 2, -1)
    assert stack_distances(np.array([], dtype=np.int64), 3).size == 0
    assert stream_belady_hits(np.array([], dtype=np.int64), 3, [1, 2]).tolist() == [0, 0]
    assert hit_ratio_curve(np.zeros(4, np.int64)).tolist() == [0.0] * 4
