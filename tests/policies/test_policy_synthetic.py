"""On the project's synthetic Mixtral preset (skipped while ``traces.synthetic`` is absent)."""

from __future__ import annotations

import numpy as np
import pytest
from moe_offload_lab.policies import build_policy, load_policy
from moe_offload_lab.policies.evaluation import evaluate

synthetic = pytest.importorskip("moe_offload_lab.traces.synthetic")


@pytest.fixture(scope="module")
def mixtral_trace():
    return synthetic.generate("mixtral-8x7b", tokens=3000, seed=3)


def test_gate_lookahead_matches_the_preset_accuracy(mixtral_trace) -> None:
    targets = mixtral_trace.provenance["lookahead_accuracy_target"]["1"]  # per target layer
    policy = build_policy({"name": "g", "predictor": {"name": "gate-lookahead"}})
    rows = evaluate(mixtral_trace, policy, 64).to_dict()["prediction"]["per_layer"]
    for row in rows:
        expected = targets[row["layer"]]
        n = row["actual"]
        tolerance = 4 * np.sqrt(expected * (1 - expected) / n) + 1e-3
        assert abs(row["topk_accuracy"] - expected) <= tolerance, row


def test_bounds_hold_on_the_preset(mixtral_trace) -> None:
    bound = evaluate(mixtral_trace, load_policy("belady"), 64,
                     score_predictions=False).cache.hit_ratio
    for name in ("lru", "lfu", "fifo", "lru-per-layer", "freq-distance"):
        ratio = evaluate(mixtral_trace, load_policy(name), 64,
                         score_predictions=False).cache.hit_ratio
        assert ratio <= bound
    oracle = evaluate(mixtral_trace, load_policy("oracle-prefetch"), 64,
                      score_predictions=False).cache.hit_ratio
    gate = evaluate(mixtral_trace, load_policy("gate-lookahead"), 64,
                    score_predictions=False).cache.hit_ratio
    assert gate <= oracle and oracle > 0.99
