"""Keys, the reference SlotCache, the context and the cost model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from moe_offload_lab.policies import CostModel, DecisionCost, LayerContext, SlotCache
from moe_offload_lab.policies.cache import CacheError, CacheView, even_partitions
from moe_offload_lab.policies.keys import (
    is_valid_key,
    key_expert,
    key_layer,
    keys_to_arrays,
    layer_keys,
    make_key,
    split_key,
)
from moe_offload_lab.policies.toy_traces import toy_spec
from moe_offload_lab.traces.errors import ConfigError
from policy_testing import policy_settings


@policy_settings
@given(st.integers(1, 100), st.integers(1, 300), st.data())
def test_keys_round_trip(n_layers: int, n_experts: int, data: st.DataObject) -> None:
    layer = data.draw(st.integers(0, n_layers - 1))
    expert = data.draw(st.integers(0, n_experts - 1))
    key = make_key(layer, expert, n_experts)
    assert is_valid_key(key, n_layers, n_experts)
    assert (key_layer(key, n_experts), key_expert(key, n_experts)) == (layer, expert)
    assert split_key(key, n_experts) == (layer, expert)
    layers, experts = keys_to_arrays([key], n_experts)
    assert (int(layers[0]), int(experts[0])) == (layer, expert)
    assert layer_keys(layer, [expert], n_experts) == [key]


def test_invalid_keys_rejected() -> None:
    assert not is_valid_key(-1, 2, 4)
    assert not is_valid_key(8, 2, 4)
    assert not is_valid_key(True, 2, 4)
    assert not is_valid_key(1.0, 2, 4)


def test_slot_cache_lifecycle() -> None:
    cache = SlotCache(3, num_experts=4, num_layers=2)
    assert isinstance(cache, CacheView)
    cache.start_fetch(1)
    assert 1 in cache.in_flight and 1 not in cache
    assert cache.free_slots() == 2
    cache.complete_fetch(1)
    assert 1 in cache and cache.used_slots() == 1 and cache.used_slots(0) == 1
    cache.insert(5)
    cache.insert(6)
    assert cache.free_slots() == 0
    with pytest.raises(CacheError):
        cache.insert(7)
    with pytest.raises(CacheError):
        cache.insert(5)
    cache.remove(5)
    with pytest.raises(CacheError):
        cache.remove(5)
    with pytest.raises(CacheError):
        cache.insert(99)
    assert len(cache) == 2


def test_slot_cache_partitions() -> None:
    cache = SlotCache(4, num_experts=4, num_layers=2, partition_slots=[1, 3])
    cache.insert(0)
    assert cache.free_slots(0) == 0 and cache.free_slots(1) == 3
    with pytest.raises(CacheError):
        cache.insert(1)
    cache.insert(4)
    assert cache.free_slots(1) == 2
    with pytest.raises(CacheError):
        SlotCache(2, 4, 2, partition_slots=[2, 2])


@policy_settings
@given(st.integers(1, 500), st.integers(1, 64))
def test_even_partitions(capacity: int, n_layers: int) -> None:
    parts = even_partitions(capacity, n_layers)
    assert sum(parts) == capacity and max(parts) - min(parts) <= 1


def test_context_set_layer_builds_keys() -> None:
    spec = toy_spec(2, 8, 2)
    ctx = LayerContext(spec, SlotCache(4, 8, 2))
    ctx.set_layer(1, [2, 5], [1, 1])
    assert ctx.keys == [10, 13] and ctx.layer == 1


def test_cost_model() -> None:
    spec = toy_spec(2, 8, 2)
    cm = CostModel.for_spec(spec)
    assert cm.expert_bytes == spec.expert_bytes
    assert math.isclose(cm.transfer_s(2), 2 * cm.transfer_s(1))
    assert cm.cpu_expert_s(3) > cm.cpu_expert_s(1)
    with pytest.raises(ConfigError):
        CostModel(0, 0, 1, 0, 0, 0, 0)
    cost = DecisionCost("cpu", 1e-6, 1e-7) + DecisionCost("gpu", 1e-6, 0.0)
    assert cost.where == "gpu" and math.isclose(cost.seconds(10), 3e-6)
    with pytest.raises(ConfigError):
        DecisionCost("tpu")


def test_context_routing_is_a_view_of_the_step_arrays() -> None:
    spec = toy_spec(3, 8, 2)
    ctx = LayerContext(spec, SlotCache(4, 8, 3))
    ids = np.arange(2 * 3 * 2).reshape(2, 3, 2) % 8  # [B, L, k]
    gates = np.linspace(0, 1, ids.size).reshape(ids.shape)
    ctx.begin_step(0, np.zeros(2, np.int32), np.ones(2, np.int8), routing=ids, gates=gates)
    for layer in range(3):
        ctx.set_layer(layer, [0], [1])  # no per-layer arrays: the step's are used
        assert np.array_equal(ctx.routing, ids[:, layer])
        assert np.array_equal(ctx.gates, gates[:, layer])
    explicit = np.full((2, 2), 7)
    ctx.set_layer(1, [7], [2], routing=explicit)  # per-layer arrays win
    assert ctx.routing is explicit and np.array_equal(ctx.gates, gates[:, 1])
    ctx.begin_step(1, np.zeros(1, np.int32), np.ones(1, np.int8))  # a new step forgets both
    ctx.set_layer(0, [1], [1])
    assert ctx.routing is None and ctx.gates is None
