"""HOBBIT's mixed-precision loading: the placement rule, and the offline replay's count."""

from __future__ import annotations

import numpy as np
import pytest
from moe_offload_lab.policies import GPU, CostModel, LayerContext, SlotCache, build_policy
from moe_offload_lab.policies.base import LOWBITS
from moe_offload_lab.policies.evaluation import evaluate
from moe_offload_lab.policies.registry import PLACEMENTS
from moe_offload_lab.policies.toy_traces import toy_spec
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import DECODE, Trace

SPEC = toy_spec(2, 8, 2)


def _ctx(routing: list[list[int]], gates: list[list[float]]) -> LayerContext:
    ids = np.asarray(routing, np.int64)  # [B, k]
    weights = np.asarray(gates, np.float32)  # [B, k]
    experts = sorted(set(ids.ravel().tolist()))
    tokens = [int((ids == e).any(axis=1).sum()) for e in experts]
    ctx = LayerContext(SPEC, SlotCache(4, 8, 2))
    ctx.begin_step(0, np.zeros(len(ids), np.int32), np.ones(len(ids), np.int8))
    ctx.set_layer(1, experts, tokens, routing=ids, gates=weights)
    return ctx


def _rule(**params: float):  # noqa: ANN202
    rule = PLACEMENTS.build({"name": "hobbit", **params})
    rule.reset(SPEC, CostModel.for_spec(SPEC))
    return rule


def test_unimportant_misses_load_low_precision() -> None:
    # top-2: the threshold is in units of the uniform share 1/2; 0.6 means a gate weight of 0.3
    rule = _rule(threshold=0.6)
    where = rule.place(_ctx([[2, 5]], [[0.75, 0.25]]), [8 + 2, 8 + 5])
    assert dict(where) == {10: GPU, 13: LOWBITS}
    assert rule.lowbit_fraction == 0.25


def test_an_expert_important_to_any_token_loads_in_full() -> None:
    # expert 5 is unimportant to token 0 but important to token 1: full precision for the batch
    where = _rule(threshold=0.6).place(_ctx([[2, 5], [5, 7]], [[0.8, 0.2], [0.6, 0.4]]),
                                       [10, 13, 15])
    assert dict(where) == {10: GPU, 13: GPU, 15: GPU}
    where = _rule(threshold=1.0).place(_ctx([[2, 5], [5, 7]], [[0.8, 0.2], [0.6, 0.4]]),
                                       [10, 13, 15])
    assert dict(where) == {10: GPU, 13: GPU, 15: LOWBITS}


def test_without_gate_weights_everything_loads_in_full() -> None:
    ctx = LayerContext(SPEC, SlotCache(4, 8, 2))
    ctx.begin_step(0, np.zeros(1, np.int32), np.ones(1, np.int8))
    ctx.set_layer(1, [2, 5], [1, 1])
    assert dict(_rule(threshold=2.0).place(ctx, [10, 13])) == {10: GPU, 13: GPU}


@pytest.mark.parametrize("params", [{"threshold": -0.5}, {"low_fraction": 0.0},
                                    {"low_fraction": 1.2}])
def test_bad_parameters_are_config_errors(params: dict) -> None:
    with pytest.raises(ConfigError):
        build_policy({"name": "x", "placement": {"name": "hobbit", **params}})


def skewed_trace(tokens: int, period: int, n_layers: int = 2, k: int = 2) -> Trace:
    """One decode request; token ``t`` routes to experts ``(t % period) * k + j`` at every
    layer, the first with gate weight 0.8, the second 0.2 (for k = 2)."""
    spec = toy_spec(n_layers, 8, k)
    group = (np.arange(tokens) % period)[:, None, None] * k  # [T, 1, 1]
    ids = (group + np.arange(k)[None, None, :]).repeat(n_layers, axis=1)  # [T, L, k]
    gates = np.broadcast_to(np.asarray([0.8, 0.2], np.float32), ids.shape).copy()  # [T, L, k]
    return Trace(spec=spec, request_id=np.zeros(tokens, np.int32),
                 position=np.arange(tokens, dtype=np.int32),
                 phase=np.full(tokens, DECODE, np.int8), expert_ids=ids.astype(np.int16),
                 gate_weights=gates)


def test_offline_replay_counts_low_precision_computes() -> None:
    # no reuse (capacity 4 < the 8 keys of a period): every access misses, the 0.2 one is low
    trace = skewed_trace(tokens=10, period=2)
    result = evaluate(trace, build_policy("hobbit"), 4).cache
    assert result.hits == 0 and result.lowbit_computes == 10 * 2
    # everything fits: after the first token the low copies stay resident and keep serving
    resident = evaluate(skewed_trace(tokens=10, period=1), build_policy("hobbit"), 4).cache
    assert resident.hits == 9 * 2 * 2 and resident.demand_fetches == 4
    assert resident.lowbit_computes == 10 * 2
    lru = evaluate(skewed_trace(tokens=10, period=1), build_policy("lru"), 4).cache
    assert lru.lowbit_computes == 0


def test_a_resident_low_copy_counts_in_a_layer_with_other_misses() -> None:
    # token 1 needs expert 1 (its low copy resident from token 0) and expert 2 (missing, full)
    spec = toy_spec(2, 8, 2)
    ids = np.array([[[0, 1]] * 2, [[2, 1]] * 2], np.int16)  # [T, L, k]
    gates = np.full(ids.shape, 0.2, np.float32)  # [T, L, k]
    gates[:, :, 0] = 0.8
    trace = Trace(spec=spec, request_id=np.zeros(2, np.int32),
                  position=np.arange(2, dtype=np.int32), phase=np.full(2, DECODE, np.int8),
                  expert_ids=ids, gate_weights=gates)
    assert evaluate(trace, build_policy("hobbit"), 8).cache.lowbit_computes == 2 * 2
