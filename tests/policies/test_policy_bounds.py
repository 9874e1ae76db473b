"""Upper bounds are never beaten by their non-oracle counterparts.

- Belady's MIN (with bypass) reaches the true optimum of demand paging, checked against an
  exhaustive search over cache states on small traces, so no replacement or admission rule with
  the same cache beats its hit ratio.
- The oracle predictor, with a planner that fetches everything it predicts for the next layer and
  a cache of at least two layers' worth of needed experts, hits on every access after the first
  layer, so no other predictor with the same planner, rule and size beats it.
"""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moe_offload_lab.policies import build_policy, load_policy
from moe_offload_lab.policies.evaluation import evaluate
from moe_offload_lab.policies.needs import access_stream, consecutive_batches, step_experts
from moe_offload_lab.traces.format import Trace
from policy_testing import policy_settings, random_trace

DEMAND_POLICIES = ["lru", "lfu", "fifo", "lifo", "lru-per-layer", "freq-distance",
                   "lru-min-count", "fiddler"]


def optimal_hits(trace: Trace, capacity: int, batch: int) -> int:
    """Most hits any demand-paging policy with admission control can reach (exhaustive)."""
    n_experts = trace.spec.num_experts
    schedule = consecutive_batches(trace.num_tokens, batch)
    times, keys = access_stream(trace.expert_ids, schedule, n_experts)
    groups = [frozenset(keys[times == t].tolist()) for t in np.unique(times)]

    @cache
    def best(i: int, state: frozenset[int]) -> int:
        if i == len(groups):
            return 0
        needed = groups[i]
        hits = len(needed & state)
        kept = needed & state  # in use by the layer: cannot be evicted now
        optional = sorted((state | needed) - kept)
        room = capacity - len(kept)
        result = 0
        for size in range(0, min(room, len(optional)) + 1):
            for extra in itertools.combinations(optional, size):
                result = max(result, best(i + 1, kept | frozenset(extra)))
        return hits + result

    return best(0, frozenset())


small = st.tuples(st.integers(0, 2**31 - 1), st.integers(1, 10), st.integers(1, 2),
                  st.integers(2, 4), st.integers(1, 2), st.integers(1, 3))


@settings(policy_settings, max_examples=150)
@given(shape=small, data=st.data())
def test_belady_is_optimal(shape: tuple[int, ...], data: st.DataObject) -> None:
    seed, tokens, n_layers, n_experts, top_k, batch = shape
    top_k = min(top_k, n_experts)
    trace = random_trace(seed, tokens, n_layers, n_experts, top_k, lookahead=())
    capacity = data.draw(st.integers(top_k, n_layers * n_experts))
    result = evaluate(trace, load_policy("belady"), capacity, batch=batch,
                      score_predictions=False)
    assert result.cache.hits == optimal_hits(trace, capacity, batch)


shapes = st.tuples(st.integers(0, 2**31 - 1), st.integers(1, 60), st.integers(1, 4),
                   st.integers(2, 10), st.integers(1, 3), st.integers(1, 4))


@settings(policy_settings, max_examples=150)
@given(shape=shapes, data=st.data())
def test_belady_never_beaten_by_demand_rules(shape: tuple[int, ...],
                                             data: st.DataObject) -> None:
    seed, tokens, n_layers, n_experts, top_k, batch = shape
    top_k = min(top_k, n_experts)
    trace = random_trace(seed, tokens, n_layers, n_experts, top_k, lookahead=())
    capacity = data.draw(st.integers(top_k * n_layers, n_layers * n_experts))
    bound = evaluate(trace, load_policy("belady"), capacity, batch=batch,
                     score_predictions=False).cache.hit_ratio
    for name in DEMAND_POLICIES:
        other = evaluate(trace, load_policy(name), capacity, batch=batch,
                         score_predictions=False).cache.hit_ratio
        assert other <= bound + 1e-12, name


PREDICTORS = [{"name": "none"}, {"name": "gate-lookahead"}, {"name": "history"},
              {"name": "popularity", "warmup_tokens": 4}, {"name": "similarity"}]
RULES = ["lru", "lfu", "fifo", "freq-distance", "confidence", "belady"]


def _prefetch_policy(predictor: dict, rule: str) -> object:
    return build_policy({
        "name": f"{predictor['name']}-{rule}", "horizon": 1, "predictor": predictor,
        "planner": {"name": "lookahead", "min_confidence": 0.0 if predictor["name"] != "oracle"
                    else 0.5, "budget_experts": 0},
        "replacement": {"name": rule},
    })


@settings(policy_settings, max_examples=150)
@given(shape=shapes, rule=st.sampled_from(RULES), data=st.data())
def test_oracle_predictor_never_beaten(shape: tuple[int, ...], rule: str,
                                       data: st.DataObject) -> None:
    seed, tokens, n_layers, n_experts, top_k, batch = shape
    top_k = min(top_k, n_experts)
    trace = random_trace(seed, tokens, n_layers, n_experts, top_k, lookahead=(1,), error=0.3)
    schedule = consecutive_batches(trace.num_tokens, batch)
    widest = max(len(e) for rows in schedule
                 for e in step_experts(trace.expert_ids[rows], n_experts)[0])
    capacity = data.draw(st.integers(min(2 * widest, n_layers * n_experts),
                                     n_layers * n_experts))
    oracle = evaluate(trace, _prefetch_policy({"name": "oracle"}, rule), capacity,
                      batch=batch, score_predictions=False).cache
    first_layer = len(step_experts(trace.expert_ids[schedule[0]], n_experts)[0][0])
    assert oracle.hits == oracle.accesses - first_layer  # only the cold first layer misses
    for predictor in PREDICTORS:
        other = evaluate(trace, _prefetch_policy(predictor, rule), capacity, batch=batch,
                         score_predictions=False).cache
        assert other.hit_ratio <= oracle.hit_ratio + 1e-12, predictor["name"]


@pytest.mark.parametrize("rule", RULES)
def test_oracle_beats_gate_lookahead_on_a_real_shape(rule: str) -> None:
    trace = random_trace(11, 300, 6, 16, 2, lookahead=(1,), error=0.25, requests=5)
    oracle = evaluate(trace, _prefetch_policy({"name": "oracle"}, rule), 12, batch=1).cache
    gate = evaluate(trace, _prefetch_policy({"name": "gate-lookahead"}, rule), 12, batch=1).cache
    assert oracle.hit_ratio >= gate.hit_ratio
