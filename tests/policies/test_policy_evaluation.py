"""Offline evaluation: metrics on hand-made cases, JSON keys, contract checks."""

from __future__ import annotations

import pytest
from moe_offload_lab.policies import FetchPlan, SlotCache, build_policy, load_policy
from moe_offload_lab.policies.evaluation import PolicyViolation, evaluate, hit_ratio, plan_with_room
from policy_testing import random_trace, sequence_trace

CACHE_KEYS = {"slots", "fraction", "replacement", "accesses", "hits", "hit_ratio",
              "cpu_computed", "streamed", "demand_fetches", "prefetched", "prefetch_used",
              "evictions", "lowbit_computes"}


def test_json_keys_are_stable() -> None:
    trace = random_trace(1, 30, 3, 8, 2, lookahead=(1, 2))
    result = evaluate(trace, load_policy("lookahead-budgeted"), 8, batch=2).to_dict()
    assert list(result) == ["policy", "oracle", "model", "num_layers", "num_experts", "top_k",
                            "tokens", "batch", "steps", "cache", "prediction"]
    assert set(result["cache"]) == CACHE_KEYS
    prediction = result["prediction"]
    assert list(prediction) == ["predictor", "horizon", "threshold", "per_distance", "per_layer"]
    assert [row["distance"] for row in prediction["per_distance"]] == [1, 2]
    assert set(prediction["per_distance"][0]) == {"distance", "precision", "recall",
                                                  "topk_accuracy", "predicted", "actual"}
    # wrap-around targets are not scored: distance d covers layers d .. L-1
    assert [(r["distance"], r["layer"]) for r in prediction["per_layer"]] == \
        [(1, 1), (1, 2), (2, 2)]


def test_batches_take_the_union_of_their_tokens() -> None:
    trace = sequence_trace([[0, 1], [1, 2], [0, 1], [1, 2]], num_experts=4, top_k=2)
    stats = evaluate(trace, load_policy("lru"), 3, batch=2).cache
    assert stats.accesses == 6  # {0, 1, 2} twice
    assert stats.hits == 3


def test_hit_ratio_helper_and_prefetch_accounting() -> None:
    trace = random_trace(4, 80, 4, 8, 2, lookahead=(1,), error=0.0)
    assert hit_ratio(trace, load_policy("lru"), 8) == evaluate(trace, load_policy("lru"),
                                                               8).cache.hit_ratio
    stats = evaluate(trace, load_policy("gate-lookahead"), 16).cache
    assert stats.prefetched > 0 and stats.prefetch_used <= stats.prefetched


def test_cpu_placement_is_counted() -> None:
    trace = random_trace(4, 20, 2, 8, 2, lookahead=())
    stats = evaluate(trace, load_policy("fiddler"), 4).cache  # toy experts: the CPU wins
    assert stats.cpu_computed > 0 and stats.cpu_computed + stats.hits == stats.accesses


class _Rogue:
    """Wraps a policy and corrupts one of its answers."""

    def __init__(self, inner, fault: str) -> None:
        self.inner, self.fault = inner, fault
        self._plan = FetchPlan()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def evict(self, view, need, layer=-1):
        if self.fault == "in-use":
            return list(self.inner._ctx.keys)[:1]
        return self.inner.evict(view, need, layer)

    def prefetch(self, ctx):
        if self.fault == "bad-key":
            self._plan.keys[:] = [10**6]
            return self._plan
        if self.fault == "present":
            self._plan.keys[:] = list(ctx.view.resident)[:1] or list(ctx.keys)[:1]
            return self._plan
        return self.inner.prefetch(ctx)

    def place(self, ctx, missing):
        if self.fault == "place":
            return {}
        return self.inner.place(ctx, missing)


@pytest.mark.parametrize("fault", ["in-use", "bad-key", "present", "place"])
def test_contract_violations_are_caught(fault: str) -> None:
    trace = random_trace(2, 30, 2, 8, 2, lookahead=())
    with pytest.raises(PolicyViolation):
        evaluate(trace, _Rogue(build_policy({"name": "lru"}), fault), 2)


def _recording_evict(cache: SlotCache, calls: list) -> object:
    def evict(need: int, layer: int, protected: list[int]) -> None:
        calls.append((need, layer))
        victims = [k for k in sorted(cache.resident) if k not in protected
                   and (layer < 0 or k // 8 == layer)][:need]
        for key in victims:
            cache.remove(key)
    return evict


def test_plan_with_room_evicts_once_then_keeps_what_fits() -> None:
    cache = SlotCache(4, 8, 2)
    for key in (0, 1, 2):
        cache.insert(key)
    calls: list = []
    fit = plan_with_room("p", [9, 10, 11], cache, 2, 8, _recording_evict(cache, calls), [0, 1])
    assert calls == [(2, -1)]  # one call for the whole plan; 0 and 1 are protected
    assert fit == [9, 10]  # only key 2 was evictable: the rest of the plan is dropped
    assert plan_with_room("p", [], cache, 2, 8, _recording_evict(cache, calls), []) == []


def test_plan_with_room_per_partition() -> None:
    cache = SlotCache(4, 8, 2, partition_slots=[2, 2])
    for key in (0, 1, 8):
        cache.insert(key)
    calls: list = []
    fit = plan_with_room("p", [2, 9, 10], cache, 2, 8, _recording_evict(cache, calls), [0, 1])
    # one call per partition short of room: layer 0's residents are protected, layer 1 drops 8
    assert calls == [(1, 0), (1, 1)]
    assert fit == [9, 10]  # key 2's partition stays full; the others are kept


@pytest.mark.parametrize("keys, message", [([99], "not a valid key"), ([0], "already present"),
                                           ([5, 5], "planned twice")])
def test_plan_with_room_refuses_bad_plans(keys: list[int], message: str) -> None:
    cache = SlotCache(4, 8, 2)
    cache.insert(0)
    with pytest.raises(PolicyViolation, match=message):
        plan_with_room("p", keys, cache, 2, 8, _recording_evict(cache, []), [])
