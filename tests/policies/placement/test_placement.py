"""Placement: always the GPU, or Fiddler's rule from the cost model."""

from __future__ import annotations

import numpy as np
import pytest
from moe_offload_lab.policies import CPU, GPU, CostModel, LayerContext, SlotCache
from moe_offload_lab.policies.registry import PLACEMENTS
from moe_offload_lab.policies.toy_traces import toy_spec

SPEC = toy_spec(2, 8, 2)


def _ctx(experts: list[int], tokens: list[int]) -> LayerContext:
    ctx = LayerContext(SPEC, SlotCache(4, 8, 2))
    ctx.begin_step(0, np.zeros(sum(tokens), np.int32), np.ones(sum(tokens), np.int8))
    ctx.set_layer(1, experts, tokens)
    return ctx


def test_always_gpu() -> None:
    rule = PLACEMENTS.build({"name": "gpu"})
    rule.reset(SPEC, CostModel.for_spec(SPEC))
    assert dict(rule.place(_ctx([1, 2], [1, 1]), [9, 10])) == {9: GPU, 10: GPU}


def _cost(cpu_per_token_s: float) -> CostModel:
    # transfer 1 ms + GPU 0.1 ms fixed, 0.01 ms/token; CPU 0.2 ms fixed plus cpu_per_token_s
    return CostModel(link_bytes_per_s=SPEC.expert_bytes / 1e-3, copy_latency_s=0.0,
                     expert_bytes=SPEC.expert_bytes, gpu_expert_s_per_token=1e-5,
                     gpu_expert_fixed_s=1e-4, cpu_expert_s_per_token=cpu_per_token_s,
                     cpu_expert_fixed_s=2e-4)


@pytest.mark.parametrize("tokens", [1, 2, 3, 5, 8, 12, 20])
def test_fiddler_rule(tokens: int) -> None:
    cost = _cost(1e-4)
    rule = PLACEMENTS.build({"name": "fiddler"})
    rule.reset(SPEC, cost)
    where = rule.place(_ctx([3, 6], [tokens, 1]), [8 + 3, 8 + 6])
    cpu_wins = cost.cpu_expert_s(tokens) < cost.transfer_s() + cost.gpu_expert_s(tokens)
    assert where[8 + 3] == (CPU if cpu_wins else GPU)
    assert where[8 + 6] == CPU  # one token: the CPU wins here


def test_fiddler_extremes() -> None:
    rule = PLACEMENTS.build({"name": "fiddler"})
    rule.reset(SPEC, _cost(0.0))  # the CPU is never slower per token
    assert rule.place(_ctx([3], [1000]), [11])[11] == CPU
    rule.reset(SPEC, _cost(1.0))  # one second per token: always fetch (beyond 1 token)
    assert rule.place(_ctx([3], [2]), [11])[11] == GPU
