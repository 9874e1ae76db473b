"""Prophet's hierarchy in the simulator: the confidence-guided rule decides host DRAM (L2) over
NVMe (L3): what is promoted ahead of need and what is kept when DRAM is full.

The hand-worked state is the confidence cache's (tests/policies/replacement): 4 MoE layers x 4
experts, top-1, layer 0 just ran, and the prediction gives key 5 (layer 1) 0.9 and key 10
(layer 2) 0.6. Hit densities: 5 -> 0.9, 10 -> 0.3, 14 -> 0.083, 9 -> 0.067, 1 -> 0.031.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from moe_offload_lab.policies.composed import ComposedPolicy
from moe_offload_lab.policies.config import policy_config
from moe_offload_lab.policies.toy_traces import make_trace
from moe_offload_lab.sim.engine import Engine
from moe_offload_lab.sim.host import HostTier
from sim_testing import HW, check_log, spec

_POLICY_TESTS = Path(__file__).resolve().parents[1] / "policies"
sys.path[:0] = [str(_POLICY_TESTS), str(_POLICY_TESTS / "replacement")]
from test_confidence_cache import _state  # noqa: E402

LINK, NVME, EXPERT = 10.0, 5.0, 100  # bytes/s, bytes/s, bytes: a promotion takes 20 s


def _tier(rule: object | None) -> HostTier:
    """DRAM of 4 experts holding keys 5, 9, 14, 1 (least recently used first)."""
    tier = HostTier(4, 16, LINK, NVME, resident=[5, 9, 14, 1])
    if rule is not None:
        tier.bind_rule(rule, EXPERT)
    return tier


def test_promotes_the_confident_expert_in_place_of_the_least_dense() -> None:
    rule, _, _ = _state()
    tier = _tier(rule)
    assert rule.host_candidates() == [5, 10]  # the prediction, most confident first
    assert tier.promote(at_s=1.0) == 1  # key 10 (0.3) beats key 1 (0.031), the weakest
    assert 1 not in tier and 5 in tier and 9 in tier and 14 in tier
    # its read occupies NVMe for 100 B / 5 B/s = 20 s (until 21 s): a GPU copy of 10 starting
    # at 20 s waits 1 s for it, then moves 100 B at 10 B/s: 100 B in 11 s; from 21 s, DRAM
    assert tier.source_bytes_per_s(10, at_s=20.0) == pytest.approx(100 / 11)
    assert tier.source_bytes_per_s(10, at_s=21.0) == LINK and 10 in tier
    assert tier.promotions == 1 and tier.nvme_reads == 0
    assert tier.promote(at_s=22.0) == 0  # everything predicted is in DRAM now


def _in_dram(tier: HostTier) -> set[int]:
    return {k for k in range(16) if k in tier}


def test_keeps_by_confidence_where_lru_drops_the_confident_expert() -> None:
    rule, _, _ = _state()
    tiered, lru = _tier(rule), _tier(None)
    # a GPU copy of key 3 (not in DRAM) reads NVMe, and 3 enters the full DRAM: the rule drops
    # key 1 (0.031, the least dense); LRU drops key 5, the one predicted next at 0.9
    assert tiered.source_bytes_per_s(3) == NVME and lru.source_bytes_per_s(3) == NVME
    assert _in_dram(tiered) == {5, 9, 14, 3}
    assert _in_dram(lru) == {9, 14, 1, 3}


def test_keeps_by_confidence_hand_worked_order() -> None:
    """Three NVMe reads into a full DRAM: each time the least dense resident leaves. Key 3
    (layer 0, never used, distance 4): 0.125 / 4 = 0.031; key 7 (layer 1, covered, unranked:
    (1 - 0.9) / 3 at distance 1) = 0.033; key 11 (layer 2, unranked) = 0.067."""
    rule, _, _ = _state()
    tier = _tier(rule)
    left = []
    for key in (3, 7, 11):
        before = _in_dram(tier)
        tier.source_bytes_per_s(key)
        left += sorted(before - _in_dram(tier))
    assert left == [1, 3, 7]  # 1 (0.031), then the newcomers 3 (0.031) and 7 (0.033)
    assert _in_dram(tier) == {5, 9, 14, 11}  # LRU would have dropped 5, 9 and 14


class _LruTiers(ComposedPolicy):
    """The same policy with its host tier left to LRU (the engines' default)."""

    def reset(self, *args: object, **kwargs: object) -> None:
        super().reset(*args, **kwargs)
        self.tiered_rule = None


# predictions two layers ahead; the GPU prefetches one layer ahead, DRAM is promoted further
PROPHET_LIKE = {"name": "prophet-tiers", "horizon": 2, "predictor": {"name": "oracle"},
                "planner": {"name": "lookahead", "budget_bytes": None, "budget_experts": 0,
                            "min_confidence": 0.5, "max_distance": 1, "cancel_stale": True},
                "replacement": {"name": "confidence"}}


@pytest.mark.parametrize("batch", [1, 2])
def test_the_engine_promotes_and_keeps_by_the_policys_rule(batch: int) -> None:
    model = spec(num_layers=4, num_experts=8, top_k=2)
    trace = make_trace(model, 160, requests=3, seed=3)
    runs = {}
    for name, cls in (("tiers", ComposedPolicy), ("lru", _LruTiers)):
        host = HostTier(16, model.num_expert_keys, HW.link_bytes_per_s, 3e9)
        engine = Engine(model, trace, cls(policy_config(PROPHET_LIKE)), HW, 8, batch=batch,
                        check=True, host=host)
        result = engine.run()
        check_log(result.events, model.expert_bytes)
        runs[name] = (host, result)
    tiers, lru = runs["tiers"][0], runs["lru"][0]
    assert tiers.promotions > 0 and lru.promotions == 0
    assert tiers.rule is not None and lru.rule is None
    # promoted experts are found in DRAM: far fewer GPU copies read NVMe, and the run is faster
    assert tiers.nvme_reads < lru.nvme_reads / 4
    assert runs["tiers"][1].makespan_s < runs["lru"][1].makespan_s
